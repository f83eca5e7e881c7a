"""Validate real ``--json`` output against the JSON Schema files in docs/schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).parents[1] / "docs" / "schemas"


def validate(name: str, document: Any) -> None:
    """Raise jsonschema.ValidationError unless ``document`` fits docs/schemas/NAME.json."""
    import jsonschema

    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)
