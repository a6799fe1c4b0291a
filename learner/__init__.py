"""The learner: assembles GRPO groups, updates the policy, broadcasts weights."""
