"""Actors: E envs per process in S pipeline stages, streaming episodes to the learner."""
