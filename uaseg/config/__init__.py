"""The config beyond Hydra's: value checks and domains, resolvers, override parsing, run identity."""
