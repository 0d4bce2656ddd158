"""A stand-in for the client system, written from the reference (§1-2): its data model and its own persistence layer."""
