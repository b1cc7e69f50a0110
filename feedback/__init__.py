"""The feedback store: the base layer. SQLModel tables, engine creation, repository functions and
exports to training formats. Imports nothing from bot/ or trainer/, and no torch or FastAPI."""
