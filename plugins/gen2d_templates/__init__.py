"""Generator plugin ``templates``: the built-in library of real, experimentally known monolayers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gen2d.scoring import GeneratedStructure


class TemplateGenerator:
    """Yields the built-in template monolayers (optionally one prototype family, or named ones)."""

    name = "templates"

    def __init__(self, family: str | None = None, names: list[str] | None = None):
        self.family = family
        self.names = names

    def available(self) -> tuple[bool, str]:
        try:
            from gen2d.data.templates import list_templates

            return (True, "") if list_templates() else (False, "template library is empty")
        except Exception as exc:
            return False, f"template library cannot load: {type(exc).__name__}: {exc}"

    def generate(self, n: int | None = None, seed: int = 0, **params: Any) -> Iterator[GeneratedStructure]:
        from gen2d.data.templates import TEMPLATES, build_template, list_templates

        names = self.names or list_templates(self.family)
        for name in names[: n if n else None]:
            spec = TEMPLATES[name]
            yield GeneratedStructure(
                structure=build_template(name),
                source_id=name,
                parameters={"family": spec.family, "citation": spec.citation},
                labels={"synth_label": 1 if spec.experimental else None},
            )
