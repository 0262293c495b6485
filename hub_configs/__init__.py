"""The shipped model configs (``NAME.json``) and the model-card template, as package data.

The template itself is the repository's top-level ``model_card.md``; ``model_card.md`` here is a
symbolic link to it, which the wheel build follows (it ships the file's content).

Installed, this folder is the package ``booru_embed.hub_configs`` (pyproject's ``package-dir``);
this file makes it a regular package, which editable installs need to find it.
Read it through ``booru_embed.resources``.
"""
