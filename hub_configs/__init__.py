"""The shipped model configs (``NAME.json``) and the model-card template, as package data.

Installed, this folder is the package ``booru_embed.hub_configs`` (pyproject's ``package-dir``);
this file makes it a regular package, which editable installs need to find it.
Read it through ``booru_embed.resources``.
"""
