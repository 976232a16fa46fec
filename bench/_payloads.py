"""Realistic request lines for the benchmarks: a system prompt, a multi-turn history and non-ASCII
text, about 1 KB of JSON each (the simulator's `answer_bytes` makes the answers as large)."""

from __future__ import annotations

from pathlib import Path

import orjson

SYSTEM = ("You are a careful support assistant for an online bookshop. Answer in the customer's language, "
          "briefly and politely; never invent order numbers; say when you do not know.")
TURNS = [
    ("user", "Bonjour ! J'ai commandé « Les Misérables » il y a une semaine, où en est ma commande ?"),
    ("assistant", "Bonjour ! Je regarde cela : pouvez-vous me donner le numéro de commande, s'il vous plaît ?"),
    ("user", "C'est la commande №{i}. Aussi, est-ce que vous livrez à Zürich ? Danke schön — 谢谢!"),
    ("assistant", "Merci. Oui, nous livrons en Suisse (Zürich compris) sous 3 à 5 jours ouvrés."),
]
ANSWER_BYTES = 1000


def realistic_body(i: int) -> dict[str, object]:
    messages = [{"role": "system", "content": SYSTEM}]
    messages += [{"role": role, "content": text.format(i=i)} for role, text in TURNS]
    messages.append({"role": "user", "content": f"Et pour la commande №{i} : puis-je changer l'adresse ? Привет 👋"})
    return {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 800, "temperature": 0.2}


def write_realistic_lines(path: Path, n: int) -> Path:
    with path.open("wb", buffering=1024 * 1024) as f:
        for i in range(1, n + 1):
            f.write(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": realistic_body(i)}) + b"\n")
    return path
