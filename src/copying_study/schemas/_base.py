"""The base of every parameter schema: strict types, no unknown keys, one readable error per bad key.

A schema is a pydantic model; :meth:`Params.from_params` validates a parameter block (a mapping from the
configuration files) and raises :class:`ParameterError` naming each bad key by its dotted path (``evaluate.k``), the
value given and what is expected. Types are strict: ``"ten"`` is not an integer and ``"false"`` is not a boolean
(YAML gives ``false`` for that), an integer is accepted where a number is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

P = TypeVar("P", bound="Params")

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "finite_number": "a finite number",
}


def similarity_or_calibrated(value: Any) -> Any:
    """A copy threshold: a similarity in [-1, 1], or ``calibrated`` (the descriptor's calibrated copy threshold)."""
    if value == "calibrated":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError("expected a similarity in [-1, 1] or 'calibrated' (the descriptor's copy threshold)")
    return float(value)


class ParameterError(ValueError):
    """Parameters that do not fit their schema: the message names every bad key, its value and what is expected."""


def _path(where: str, loc: tuple[Any, ...]) -> str:
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_error(where: str, error: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """One line for one pydantic error: ``evaluate.k = 'ten': expected an integer``."""
    kind, loc = error["type"], tuple(error["loc"])
    path = _path(where, loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown parameter (value {_value(error['input'])}){hint}"
    if kind == "missing":
        return f"{path}: missing (this parameter has no default)"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        keys = _allowed_keys(model, loc)
        suffix = f" with keys {', '.join(keys)}" if keys else ""
        return f"{path} = {_value(error['input'])}: expected a mapping{suffix}"
    if kind == "too_short":
        return f"{path} = {_value(error['input'])}: expected at least {error['ctx']['min_length']} item(s)"
    if kind in _EXPECTED:
        return f"{path} = {_value(error['input'])}: expected {_EXPECTED[kind]}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc or (kind == "value_error" and isinstance(error.get("input"), Mapping)):
        return f"{path}: {message}"  # a check across keys (a model validator): its message names them
    if message.startswith("Input should be "):
        bound = kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
        message = ("expected a value " if bound else "expected ") + message.removeprefix("Input should be ")
    return f"{path} = {_value(error['input'])}: {message}"


def _model_in(annotation: Any) -> Any:
    """The model class of a field annotation (``X``, ``X | None``), else ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def _allowed_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``loc``, when ``loc`` leads to one."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_in(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    return [f.alias or name for name, f in fields.items()] if fields else []


class Params(BaseModel):
    """Base of the stage schemas: strict, closed (unknown keys are errors), validated defaults."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_default=True, populate_by_name=True,
                              allow_inf_nan=False)

    where: ClassVar[str] = ""
    """The dotted name of the block in the parameters (``evaluate``): the prefix of every error message."""

    @classmethod
    def from_params(cls: type[P], params: Mapping[str, Any] | BaseModel | None, where: str | None = None) -> P:
        """``params`` validated (defaults filled in); :class:`ParameterError` names every bad key at once."""
        if isinstance(params, cls):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump(by_alias=True)
        where = cls.where if where is None else where
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            keys = ", ".join(f.alias or n for n, f in cls.model_fields.items())
            raise ParameterError(f"{where} = {_value(params)}: expected a mapping with keys {keys}")
        try:
            return cls.model_validate(dict(params))
        except ValidationError as exc:
            lines = [describe_error(where, e, cls) for e in exc.errors(include_url=False)]
            raise ParameterError("; ".join(dict.fromkeys(lines)) if len(lines) == 1 else
                                 f"{len(lines)} bad parameters:\n  " + "\n  ".join(dict.fromkeys(lines))) from None

    def as_dict(self) -> dict[str, Any]:
        """The validated parameters as plain nested dicts (the shape of the configuration block)."""
        return self.model_dump(by_alias=True)
