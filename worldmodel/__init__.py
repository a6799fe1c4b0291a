"""World models: a learned simulator trained on recorded episodes (issue 17).

:mod:`worldmodel.data` turns episodes into training windows and reset frames,
:mod:`worldmodel.models` holds the frame predictor and the success model,
:mod:`worldmodel.metrics` their held-out measures, :mod:`worldmodel.train` the
``run.mode: train_world_model`` loop; :mod:`envs.world_model` runs them as an env.
"""
