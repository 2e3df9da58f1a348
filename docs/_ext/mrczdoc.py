"""Sphinx directives that document only what the installed mrcz package has.

``.. api-objects::``
    One dotted name per content line (``mrcz.readMRC``). Each object that can
    be imported gets an ``autofunction``/``autoclass``/``autodata`` entry; the
    others are listed in a short "(coming)" note instead of failing the build.

``.. api-module:: mrcz.stream``
    Every public function and class defined in the module (its ``__all__`` if it
    has one), each once even where it has aliases, in source order; options
    ``:exclude:`` (names documented elsewhere). A module that
    cannot be imported gives a "(coming)" note.

``.. cli-help:: [SUBCOMMAND]``
    The ``--help`` text of the ``mrcz`` command (or of one subcommand), taken
    from ``mrcz.cli.build_parser`` at build time; "(coming)" when absent.

``.. if-module:: mrcz.stream``
    Parse the content only when the module imports; otherwise parse the text of
    the ``:else:`` option (default: a "(coming)" note).
"""
from __future__ import annotations

import importlib
import inspect
import re

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _import(dotted: str):
    """Return the object named ``dotted`` (module or attribute), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except Exception:
            return None
        return obj
    return None


def module_available(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def _kind(obj) -> str | None:
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or callable(obj):
        return "function"
    return None


def _entry(kind: str, dotted: str) -> list[str]:
    if kind == "class":
        return [f".. autoclass:: {dotted}", "   :members:", "   :show-inheritance:", ""]
    return [f".. autofunction:: {dotted}", ""]


class _Base(SphinxDirective):
    def parse_lines(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        source = self.get_source_info()[0] or "<mrczdoc>"
        nested_parse_with_titles(self.state, StringList(lines, source=source), container,
                                 self.content_offset)
        return container.children

    def coming(self, what: str) -> list[str]:
        return [f"*(coming: {what} is not part of this build yet.)*", ""]


class ApiObjects(_Base):
    has_content = True

    def run(self):
        lines: list[str] = []
        missing: list[str] = []
        for dotted in (line.strip() for line in self.content):
            if not dotted:
                continue
            obj = _import(dotted)
            kind = _kind(obj) if obj is not None else None
            if kind is None:
                missing.append(dotted)
                continue
            lines += _entry(kind, dotted)
        if missing:
            lines += self.coming(", ".join(f"``{name}``" for name in missing))
        return self.parse_lines(lines)


class ApiModule(_Base):
    required_arguments = 1
    option_spec = {"exclude": directives.unchanged}

    def run(self):
        modname = self.arguments[0]
        exclude = {n.strip() for n in self.options.get("exclude", "").split(",") if n.strip()}
        lines: list[str] = []
        if not module_available(modname):
            return self.parse_lines(lines + self.coming(f"the module ``{modname}``"))
        module = importlib.import_module(modname)
        lines += [f".. automodule:: {modname}", ""]
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n, v in vars(module).items()
                     if not n.startswith("_") and getattr(v, "__module__", None) == modname]
        seen: dict[int, tuple[int, str]] = {}
        for name in names:
            obj = getattr(module, name, None)
            if obj is None or _kind(obj) is None or name in exclude:
                continue
            if getattr(obj, "__module__", modname) != modname:
                continue
            try:
                line = inspect.getsourcelines(obj)[1]
            except (OSError, TypeError):
                line = 10**9
            # keep one name per object: its own __name__ if listed, else the first
            key = id(obj)
            if key in seen and seen[key][1] == getattr(obj, "__name__", None):
                continue
            if key not in seen or name == getattr(obj, "__name__", None):
                seen[key] = (line, name)
        documented = {name for _, name in seen.values()}
        if exclude & documented:
            documented -= exclude
        for line, name in sorted(seen.values()):
            obj = getattr(module, name)
            lines += _entry(_kind(obj), f"{modname}.{name}")
        if not documented:
            lines += ["(No further public functions or classes.)", ""]
        return self.parse_lines(lines)


class IfModule(_Base):
    required_arguments = 1
    has_content = True
    option_spec = {"else": directives.unchanged}

    def run(self):
        modname = self.arguments[0]
        if module_available(modname):
            return self.parse_lines(list(self.content))
        text = self.options.get("else")
        return self.parse_lines([text, ""] if text else self.coming(f"``{modname}``"))


class CliHelp(_Base):
    """``.. cli-help:: [SUBCOMMAND]``: the ``--help`` text of the ``mrcz`` command."""

    optional_arguments = 1

    def run(self):
        import contextlib
        import io
        import os

        command = self.arguments[0] if self.arguments else None
        try:
            cli = importlib.import_module("mrcz.cli")
            parser = cli.build_parser("mrcz")
        except Exception:
            return self.parse_lines(self.coming("the ``mrcz`` command"))
        if command:
            import argparse
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            found = subs[0].choices.get(command) if subs else None
            if found is None:
                return self.parse_lines(self.coming(f"``mrcz {command}``"))
            parser = found
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"
        try:
            text = parser.format_help()
        finally:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class BenchOverview(_Base):
    has_content = True

    """``.. bench-overview::``: the benchmark scripts in ``bench/`` and their results.

    For every ``bench/*.py`` of the source tree: its name, how to run it and its
    module docstring (as a literal block). Then every result file found in
    ``bench/results/`` (``.txt``, ``.md``, ``.csv``, ``.json``, ``.out``,
    ``.log``) as a literal block, and every ``docs/_static/bench*.png`` not
    listed in the directive's content (one file name per line: figures the page
    shows itself) as a figure. Nothing is
    invented: with no scripts or results the page says so.
    """

    def run(self):
        import ast
        import os

        docs = str(self.env.srcdir)
        bench = os.path.join(os.path.dirname(docs), "bench")
        result: list[nodes.Node] = []
        scripts = sorted(f for f in os.listdir(bench) if f.endswith(".py")
                         and not f.startswith("_")) if os.path.isdir(bench) else []
        if not scripts:
            return self.parse_lines(self.coming("the benchmark scripts (``bench/``)"))
        for script in scripts:
            path = os.path.join(bench, script)
            self.env.note_dependency(path)
            with open(path, encoding="utf-8") as f:
                try:
                    doc = ast.get_docstring(ast.parse(f.read())) or ""
                except SyntaxError:
                    doc = ""
            section = nodes.rubric(text=f"bench/{script}")
            result.append(section)
            command = f"python bench/{script} --help"
            result.append(nodes.literal_block(command, command, language="console"))
            if doc:
                result.append(nodes.literal_block(doc, doc, language="text"))
        for folder in (os.path.join(bench, "results"),):
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if not name.endswith((".txt", ".md", ".csv", ".json", ".out", ".log")):
                    continue
                path = os.path.join(folder, name)
                self.env.note_dependency(path)
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                shown = os.path.relpath(path, os.path.dirname(bench))
                result.append(nodes.rubric(text=f"Results: {shown}"))
                result.append(nodes.literal_block(text, text, language="text"))
        static = os.path.join(docs, "_static")
        shown = {line.strip() for line in self.content if line.strip()}
        figures = sorted(f for f in os.listdir(static)
                         if f.startswith("bench") and f.endswith(".png") and f not in shown) \
            if os.path.isdir(static) else []
        found_results = any(isinstance(n, nodes.rubric) and n.astext().startswith("Results")
                            for n in result)
        for name in figures:
            result += self.parse_lines([f".. figure:: /_static/{name}", "   :width: 90%", "",
                                        f"   ``{name}``", ""])
        if not (found_results or figures or shown):
            result += self.parse_lines([
                "No benchmark results are stored in this source tree yet (none in "
                "``bench/results/`` and no ``docs/_static/bench*.png``): run the scripts "
                "above to measure your machine.", ""])
        return result


_NAMES_CONTINUED = re.compile(r"^\s*[A-Za-z_]\w*(\s*,\s*[A-Za-z_]\w*)*\s*,\s*$")
_NAMES_END = re.compile(r"^\s*[A-Za-z_]\w*(\s*,\s*[A-Za-z_]\w*)*\s*:\s")


def join_parameter_names(app, what, name, obj, options, lines):
    """Join a numpy-style parameter list whose names wrap onto a second line.

    ``a, b, c,`` followed by ``d, e : description`` becomes one entry, as
    napoleon expects (it would otherwise read the first line as a parameter
    without a description and break the field list).
    """
    i = 0
    while i < len(lines) - 1:
        if _NAMES_CONTINUED.match(lines[i]) and _NAMES_END.match(lines[i + 1]):
            lines[i:i + 2] = [lines[i].rstrip() + " " + lines[i + 1].lstrip()]
        else:
            i += 1


_FIELD_SECTIONS = {"parameters", "other parameters", "returns", "yields", "receives",
                   "attributes", "keyword arguments"}
_ENTRY = re.compile(r"^([A-Za-z_*][\w*]*(?:\s*,\s*[A-Za-z_*][\w*]*)*)\s*(?::\s*(.*))?$")


def _is_description(text: str) -> bool:
    """True when the text after ``name :`` reads as prose rather than a type."""
    text = text.strip()
    return (len(text.split()) > 3 or text.endswith((".", ";", ":")) or "``" in text
            or text.startswith(("(", "`", "'", '"')))


def description_after_colon(app, what, name, obj, options, lines):
    """Accept ``name : description`` entries in numpy-style field sections.

    This package's docstrings often put the description after the colon, where
    napoleon expects a type; such entries become ``name`` plus an indented
    description. A paragraph after a blank line in a field section that is not
    an entry starts a Notes section (napoleon would read it as a parameter).
    """
    out: list[str] = []
    section = None
    previous_blank = False
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and underline and set(underline) == {"-"} and not line[0].isspace():
            section = line.strip().lower()
            out += [line, lines[i + 1]]
            i += 2
            previous_blank = False
            continue
        if section in _FIELD_SECTIONS and line and not line[0].isspace():
            match = _ENTRY.match(line)
            if match and match.group(2) is not None and _is_description(match.group(2)):
                out += [match.group(1), "    " + match.group(2)]
                i += 1
                previous_blank = False
                continue
            if not match and previous_blank:
                out += ["Notes", "-----", ""]
                section = "notes"
        out.append(line)
        previous_blank = not line.strip()
        i += 1
    lines[:] = out


def setup(app):
    app.connect("autodoc-process-docstring", join_parameter_names, priority=400)
    app.connect("autodoc-process-docstring", description_after_colon, priority=401)
    app.add_directive("api-objects", ApiObjects)
    app.add_directive("api-module", ApiModule)
    app.add_directive("if-module", IfModule)
    app.add_directive("cli-help", CliHelp)
    app.add_directive("bench-overview", BenchOverview)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
