"""The training methods, in the order a round runs them when several are chosen: SFT (prompt →
completion), DPO (chosen vs rejected), KTO (thumbs). The one list: the export formats, the CLI, the
admin API and the trainer all use it."""

from __future__ import annotations

METHODS = ("sft", "dpo", "kto")


def parse_methods(setting: str) -> list[str] | None:
    """The methods named by a `--methods` setting, in `METHODS` order; None for `auto`."""
    if setting.strip() == "auto":
        return None
    wanted = {m.strip() for m in setting.split(",") if m.strip()}
    unknown = sorted(wanted - set(METHODS))
    if unknown or not wanted:
        raise ValueError(f"unknown training methods {unknown or setting!r}; use auto or some of {', '.join(METHODS)}")
    return [m for m in METHODS if m in wanted]
