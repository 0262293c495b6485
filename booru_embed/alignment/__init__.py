"""Aligners: small maps from an external embedding (a WD tagger's, CLIP, SigLIP) into booru-embed's space.

An aligner is trained by ``booru-embed align`` on (post id, external vector) pairs joined to a DATA_DIR,
saved in ``MODEL_DIR/aligners/NAME/`` and applied by ``BooruEmbedder.embed_external``; its output is
read back into tags by ``decode`` and searched by ``PostIndex.search_embeddings`` like any embedding.

Modules, in import order: ``store`` (file layout and the ONNX Runtime path, no torch), ``model`` (the
torch module, safetensors), ``pairs`` (reading and joining pair files), ``metrics``, ``fit`` (the
training loop), ``command`` (``booru-embed align``). Nothing else in the package imports this one except
the embedder's ``embed_external``, ``export-onnx`` and the commands.
"""
