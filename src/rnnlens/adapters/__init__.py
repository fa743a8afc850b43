"""Framework adapters. Each is imported only when a model of its framework is traced."""
