"""The staff console's templates and static files (package data)."""
