"""MkDocs hook: the experiment key reference, generated when the site is built.

Every key an experiment file accepts is declared once, in `search.experiment.keys.SECTIONS`
(how the parser reads and checks it, and its help); every training setting once, in
`oneprune.config.TrainConfig` (its default and whether a study may search it); every
schedule parameter once, on its family (`oneprune.schedules.FAMILIES`: its help and default
bounds, `DEFAULT_BOUNDS`); every allocation argument once, on its allocation. This hook
renders them into `guide/keys.md` in place of the marker below, so the page cannot
drift from what the parser accepts; nothing generated is committed.
`tests/service/test_docs.py` checks that every key the parser accepts appears here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PAGE = "guide/keys.md"
MARKER = "<!-- experiment-keys -->"

TITLES = {
    "": ("Top level", "The keys of the file itself."),
    "sparsity": ("`sparsity:` as a range",
                 "`sparsity: {min, max, max_drop}` searches the final sparsity as a second "
                 "objective ([How sparse can I go](../concepts/how-sparse.md)). A number or "
                 "a list of numbers takes none of these keys."),
    "confirm": ("`confirm:`",
                "How a sparsity range confirms the point it re-runs: the cheapest points of "
                "each family's feasible front are re-trained with fresh seeds first "
                "([How sparse can I go](../concepts/how-sparse.md)). Only with a range."),
    "latency": ("`latency:`",
                "How `cost: latency` times each trial's model, interleaved with its dense "
                "twin ([How fast can it run](../concepts/how-fast.md))."),
    "search": ("`search:`", "How each family's Optuna study samples."),
    "training": ("`training:`",
                 "Shared by every family. Where a setting is searchable, a `[low, high]` "
                 "pair or a list of values makes it a parameter of every family's search "
                 "space; outside the search (base configs, the dense reference) it takes the "
                 "middle of its range (geometric on a log scale) or its first choice."),
    "resources": ("`resources:`", "What one trial holds on the cluster."),
    "tracking": ("`tracking:`", "Where results are stored."),
    "faults": ("`faults:` (tests only)",
               "Fault injection that proves the service survives failures "
               "([Reliability](../reliability.md)); never set it in a real study."),
}

SEARCHED = {"log": "`[low, high]`, log scale", "linear": "`[low, high]`",
            "choice": "a list of values"}

def _cell(text: Any) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def _value(value: Any) -> str:
    """A default as it would be written in YAML, in backticks; "–" for none."""
    import yaml

    if value is None or value is dataclasses.MISSING:
        return "–"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, tuple):
        value = list(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    except yaml.YAMLError:
        text = str(value)
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"`{text}`"


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _defaults(section: str) -> dict[str, Any]:
    """Defaults declared by the dataclass a section is parsed into."""
    from oneprune.cost import LatencySettings
    from search.experiment import schema as experiment

    holder = {"": experiment.Experiment, "tracking": experiment.Experiment,
              "search": experiment.SearchSettings, "resources": experiment.Resources,
              "faults": experiment.Faults, "sparsity": experiment.SparsityRange,
              "confirm": experiment.Confirmation, "latency": LatencySettings}.get(section)
    if holder is None:
        return {}
    return {f.name: _field_default(f) for f in dataclasses.fields(holder)}


def keys_table(section: str) -> list[str]:
    """The Markdown table of one section of `search.experiment.keys.SECTIONS`."""
    from oneprune.config import TrainConfig
    from search.experiment.keys import SECTIONS

    settings = TrainConfig.settings()
    defaults = _defaults(section)
    rows = ["| key | meaning | default | searchable as |", "| --- | --- | --- | --- |"]
    for name, key in SECTIONS[section].items():
        dotted = f"{section}.{name}" if section else name
        searched = "–"
        if name in settings and section in ("", "training"):
            spec = settings[name]
            default = _value(_field_default(spec))
            searched = SEARCHED.get(spec.metadata["tune"], "–")
        elif dotted == "confirm.candidates":  # computed from the study's budget
            default = "see meaning"
        elif name in defaults:
            default = _value(defaults[name])
            if default == "–" and defaults[name] is dataclasses.MISSING:
                default = "required"
        else:
            default = "see meaning"
        if name in ("search", "training", "resources", "tracking", "faults", "confirm",
                    "latency") and not section:
            meaning = f"{_cell(key.help)} [Its keys](#{_anchor(name)})."
            default = "–"
        else:
            meaning = _cell(key.help)
        rows.append(f"| `{dotted}` | {meaning} | {default} | {searched} |")
    return rows


def _anchor(section: str) -> str:
    return f"section-{section or 'top'}"


def space_tables() -> list[str]:
    """`search.space.<family>`: each family's searchable parameters and default bounds."""
    from oneprune.schedules import FAMILIES

    lines = []
    for family, cls in FAMILIES.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        described = {**cls.parameters(), **cls.SEARCH_OPTIONS}
        lines += [f"#### `search.space.{family}` {{ #space-{family} }}", "",
                  f"`{cls.__name__}`: reaches its final sparsity at `{cls.ENDS_AT}`.", "",
                  f"| key | what it is | default bounds | `{cls.__name__}(...)` default |",
                  "| --- | --- | --- | --- |"]
        for name, bounds in cls.DEFAULT_BOUNDS.items():
            fixed = _value(_field_default(fields[name])) if name in fields else "–"
            what = described[name].help
            lines.append(f"| `search.space.{family}.{name}` | {_cell(what)} | "
                         f"{_value(bounds)} | {fixed} |")
        lines.append("")
    return lines


def allocation_tables() -> list[str]:
    """`allocation_args.<argument>`: each allocation's own arguments, their defaults and
    default search ranges, as each allocation declares them."""
    from oneprune.allocation import ALLOCATIONS

    lines = ["| key | allocation | what it is | default | searched by default in |",
             "| --- | --- | --- | --- | --- |"]
    for name, cls in ALLOCATIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for argument, spec in cls.arguments().items():
            lines.append(f"| `allocation_args.{argument}` | `{name}` | {_cell(spec.help)} | "
                         f"{_value(_field_default(fields[argument]))} | "
                         f"{_value(spec.bounds) if spec.searched else '–'} |")
    return lines


def render() -> str:
    """The whole generated reference, in Markdown."""
    from search.experiment.keys import SECTIONS

    lines: list[str] = []
    for section in SECTIONS:
        title, intro = TITLES.get(section, (f"`{section}:`", ""))
        lines += [f"## {title} {{ #{_anchor(section)} }}", "", intro, ""]
        lines += keys_table(section)
        lines.append("")
        if section == "":
            lines += ["### `allocation_args`: each allocation's arguments "
                      "{ #section-allocation-args }", "",
                      "An allocation that takes arguments declares them itself; "
                      "`allocation_args` gives each a number (fixed) or a `[low, high]` pair "
                      "(searched). An argument a study's allocations take that it does not "
                      "give is searched over the default range, in the trials that chose "
                      "that allocation.", ""]
            lines += allocation_tables()
            lines.append("")
        if section == "search":
            lines += ["### `search.space`: each family's bounds { #section-search-space }", "",
                      "`search.space.<family>` overrides any subset of the family's default "
                      "bounds (`[low, high]`; a pair with low = high fixes the parameter), "
                      "e.g. `space: {one_cycle: {alpha: [8, 20]}}`. Each family checks its "
                      "own, and the service refuses bounds it does not know.", ""]
            lines += space_tables()
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{PAGE} lost its marker {MARKER}: the key reference has no place")
    return markdown.replace(MARKER, render())
