"""The `supportloop` command line (`bot.cli:main`), one module per command group."""
