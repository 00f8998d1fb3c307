"""Recipe stage: tidy recipes, chemicals, features, synthesis models."""
