"""Deploy configs: their schema (Ray Serve's field names), loading and validation, overrides of the code's options."""
