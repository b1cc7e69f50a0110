"""Static assets served by the bot (package data): the demo page, later the `<support-chat>` widget."""
