"""Derive a tool's input schema and its argument validation from its signature.

A tool is a plain function with type hints; its JSON Schema is whatever
pydantic makes of those hints, never written by hand, and the same pydantic
model validates incoming arguments, so the schema a client sees and the check
it is held to cannot drift apart.  Both the gateway's local tools and the
sidecar's P2P tools go through here, which is why it lives in shared_schema.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


class ArgumentsInvalid(ValueError):
    """Arguments that do not fit the tool's signature; ``errors`` is a JSON-able list."""

    def __init__(self, tool: str, errors: list[dict[str, Any]]) -> None:
        self.tool = tool
        self.errors = errors
        summary = "; ".join(f"{'.'.join(map(str, e.get('loc', ()))) or '<root>'}: {e.get('msg')}" for e in errors[:5])
        super().__init__(f"invalid arguments for {tool}: {summary}")


def _clean_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors minus the parts that are not JSON (ctx objects, urls)."""
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


class Signature:
    """The validated calling convention of one function.

    Fields get internal names (``p0``, ``p1`` ...) with the parameter names as
    aliases, so parameters called ``schema`` or ``model_config`` do not collide
    with pydantic's own attributes.  A ``**kwargs`` parameter makes the tool
    accept (and receive) arguments the schema does not name.

    ``lenient`` is for tools written for a server that did not validate
    (mounted collections): it keeps what agents of that server relied on and
    nothing that could change a value's meaning.  Arguments the function does
    not take are dropped (``bind`` reports them, so the caller can be told),
    a number where the signature says ``str`` becomes its decimal text, and
    an explicit ``null`` is accepted for a parameter whose default is
    ``None``.  Everything else that does not fit is refused as before.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, lenient: bool = False) -> None:
        self.name: str = name or str(getattr(fn, "__name__", "tool"))
        signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except (NameError, TypeError, AttributeError):
            # An annotation that cannot be resolved degrades to "any value".
            hints = {}
        fields: dict[str, Any] = {}
        self._names: list[tuple[str, str]] = []
        accepts_extra = False
        for index, (param_name, param) in enumerate(signature.parameters.items()):
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                accepts_extra = True
                continue
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            annotation = hints.get(param_name, Any)
            default = ... if param.default is inspect.Parameter.empty else param.default
            if lenient and default is None and annotation is not Any:
                annotation = Optional[annotation]  # noqa: UP045 - the annotation is a runtime value here
            internal = f"p{index}"
            fields[internal] = (annotation, Field(default, alias=param_name))
            self._names.append((internal, param_name))
        config = ConfigDict(
            extra="allow" if accepts_extra else "forbid",
            arbitrary_types_allowed=True,
            populate_by_name=False,
            coerce_numbers_to_str=lenient,
        )
        self.lenient = lenient
        self._model: type[BaseModel] = create_model(
            f"{self.name.replace('.', '_')}_arguments", __config__=config, **fields
        )
        self.accepts_extra = accepts_extra
        self.parameter_names = frozenset(alias for _, alias in self._names)

    def input_schema(self) -> dict[str, Any]:
        schema = self._model.model_json_schema(by_alias=True)
        schema.pop("title", None)
        schema.setdefault("properties", {})
        schema["type"] = "object"
        if not self.accepts_extra:
            schema["additionalProperties"] = False
        return schema

    def ignored(self, arguments: dict[str, Any] | None) -> list[str]:
        """The names in ``arguments`` a lenient signature drops (none for a strict one, which refuses them)."""
        if not self.lenient or self.accepts_extra or not arguments:
            return []
        return [key for key in arguments if key not in self.parameter_names]

    def bind(self, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """Validate ``arguments`` and return the keyword arguments to call the function with."""
        if self.lenient and arguments and not self.accepts_extra:
            arguments = {key: value for key, value in arguments.items() if key in self.parameter_names}
        try:
            model = self._model.model_validate(arguments or {})
        except ValidationError as exc:
            raise ArgumentsInvalid(self.name, _clean_errors(exc)) from None
        kwargs = {alias: getattr(model, internal) for internal, alias in self._names}
        if self.accepts_extra and model.model_extra:
            kwargs.update(model.model_extra)
        return kwargs
