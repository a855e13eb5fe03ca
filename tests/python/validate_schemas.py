"""Validates keylink's example jobs, configs and contracts against the committed JSON Schemas
(schemas/*.schema.json) with an independent validator (python-jsonschema, draft 2020-12), and
checks that mutated copies (a misspelt key, a wrong type) are rejected.

usage: validate_schemas.py SCHEMAS_DIR [--readme README.md] [--cases CASES.json] [KIND:FILE ...]

CASES.json lists [kind, document, accepted] triples: shapes the hand-written schemas must accept
or reject exactly as keylink's deserializers do.

KIND is job, stream-job, config, contract or auto (guessed from the top-level keys). README code blocks
(```json / ```yaml) are classified the same way; blocks that are not a whole job, config or
contract (excerpts) are skipped and counted. Prints a summary; exits 1 on any failure.
"""

import copy
import json
import re
import sys

import jsonschema
import yaml

KINDS = ("job", "stream-job", "config", "contract")

# Where a wrong type goes, per kind: the first pointer that exists in the example.
WRONG_TYPE = {
    "job": [("encryption", "timestamp_config", "field"), ("source_data", "data_connector_ref", "name")],
    "stream-job": [("encryption", "timestamp_config", "field"), ("source", "kafka", "topic"), ("source", "http", "listen")],
    "config": [("connectors", "*", "type"), ("policies", "*", "retention_days"), ("contracts",)],
    "contract": [("keyField",), ("key_field",), ("dataContract", "keyField"), ("ref", "handle")],
}


def load(path, text=None):
    if text is None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    if path.endswith((".yaml", ".yml")):
        return yaml.safe_load(text)
    return json.loads(text)


def classify(doc):
    if not isinstance(doc, dict):
        return None
    if "source_data" in doc:
        return "job"
    if "source" in doc and "encryption" in doc:
        return "stream-job"
    if {"connectors", "key_store", "policies", "contracts"} & doc.keys():
        return "config"
    if {"keyField", "key_field", "dataContract", "data_contract"} & doc.keys():
        return "contract"
    return None


def readme_blocks(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for i, m in enumerate(re.finditer(r"```(json|yaml)\n(.*?)```", text, re.S)):
        lang, body = m.group(1), m.group(2)
        line = text[: m.start()].count("\n") + 1
        name = f"{path}:{line}"
        try:
            doc = yaml.safe_load(body) if lang == "yaml" else json.loads(body)
        except Exception:  # an excerpt with `…` or comments: not a whole document
            yield name, None, None
            continue
        yield name, classify(doc), doc


def errors(validator, doc):
    return sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))


# Objects whose keys are names the user chooses (maps), not settings: a "misspelt" key in one is
# just another name.
MAPS = {"connectors", "policies", "field_patterns", "piiFields", "pii_fields", "schema", "metadata"}


def first_dict_path(doc, path=()):
    """A path to the deepest-first nested object with keys (for a misspelt nested key), outside
    values keylink accepts as they are (a contract's `schema`, `metadata`)."""
    if path and path[-1] in ("schema", "metadata"):
        return None
    if isinstance(doc, dict):
        for k in sorted(doc):
            deeper = first_dict_path(doc[k], path + (k,))
            if deeper is not None:
                return deeper
        return path if doc and not (path and path[-1] in MAPS) else None
    if isinstance(doc, list):
        for i, v in enumerate(doc):
            deeper = first_dict_path(v, path + (i,))
            if deeper is not None:
                return deeper
    return None


def get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def resolve(doc, pattern):
    """The concrete path of `pattern` (`*` = the first key) in doc, or None."""
    out = []
    for p in pattern:
        if not isinstance(doc, dict) or not doc:
            return None
        if p == "*":
            p = sorted(doc)[0]
        if p not in doc:
            return None
        out.append(p)
        doc = doc[p]
    return tuple(out)


def misspelt(key):
    return key + key[-1] if key else "x"


def mutations(kind, doc):
    """(description, mutated document) pairs that the schema must reject."""
    out = []
    # a misspelt top-level key, and a misspelt key in a nested object
    for path in {(), first_dict_path(doc) or ()}:
        m = copy.deepcopy(doc)
        obj = get(m, path)
        key = sorted(obj)[0]
        obj[misspelt(key)] = obj.pop(key)
        out.append((f"misspelt key {'/'.join(map(str, path + (key,)))}", m))
    # a wrong type
    for pattern in WRONG_TYPE[kind]:
        path = resolve(doc, pattern)
        if path is not None:
            m = copy.deepcopy(doc)
            parent = get(m, path[:-1])
            parent[path[-1]] = 12345 if isinstance(parent[path[-1]], str) else "not-a-number"
            out.append((f"wrong type at {'/'.join(path)}", m))
            break
    return out


def main(argv):
    schemas_dir = argv[1]
    validators = {}
    for kind in KINDS:
        with open(f"{schemas_dir}/{kind}.schema.json", encoding="utf-8") as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[kind] = jsonschema.Draft202012Validator(schema)

    examples = []  # (name, kind, doc)
    cases = []  # (name, kind, doc, accepted)
    skipped = []
    args = argv[2:]
    i = 0
    while i < len(args):
        if args[i] == "--readme":
            for name, kind, doc in readme_blocks(args[i + 1]):
                if kind is None:
                    skipped.append(name)
                else:
                    examples.append((name, kind, doc))
            i += 2
            continue
        if args[i] == "--cases":
            with open(args[i + 1], encoding="utf-8") as f:
                for n, (kind, doc, accepted) in enumerate(json.load(f)["cases"]):
                    cases.append((f"{args[i + 1]} case {n}", kind, doc, accepted))
            i += 2
            continue
        kind, path = args[i].split(":", 1)
        doc = load(path)
        if kind == "auto":
            kind = classify(doc)
            if kind is None:
                sys.exit(f"{path}: not a job, config or contract")
        examples.append((path, kind, doc))
        i += 1

    failures = []
    counts = {k: 0 for k in KINDS}
    rejected = 0
    for name, kind, doc in examples:
        errs = errors(validators[kind], doc)
        if errs:
            for e in errs[:3]:
                failures.append(f"{name} ({kind}): /{'/'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        counts[kind] += 1
        for what, mutated in mutations(kind, doc):
            if errors(validators[kind], mutated):
                rejected += 1
            else:
                failures.append(f"{name} ({kind}): {what}: accepted, should be rejected")

    for name, kind, doc, accepted in cases:
        if (not errors(validators[kind], doc)) != accepted:
            failures.append(f"{name} ({kind}): {'rejected' if accepted else 'accepted'}: {json.dumps(doc)}")

    print(
        "valid: " + ", ".join(f"{k} {counts[k]}" for k in KINDS)
        + f"; mutations rejected: {rejected}; cases: {len(cases)}"
        + f"; README excerpts skipped: {len(skipped)}"
    )
    for f in failures:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
