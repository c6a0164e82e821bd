"""The service layer: one conductor per Function App trigger."""
