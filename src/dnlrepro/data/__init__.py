"""Data: downloads, synthetic stand-ins, preparation, datasets and mmseg-exact transforms.

§ numbers refer to docs/reference.md.

Modules (import them directly; nothing heavy is imported here):

* ``classes``    -- ``CLASSES`` / ``PALETTE`` dicts keyed by dataset name
  (docs/reference.md §3.1, §3.2).
* ``transforms`` -- mmcv-exact resize, crop, flip, photometric, normalise, pad (§3.3, §3.4).
* ``datasets``   -- ``build_dataset``, ``SegDataset``, ``load_label`` (§3.1, §3.2).
* ``download``   -- verified, resumable HTTP downloads; checkpoint and pretrained URL tables.
* ``archives``   -- safe zip/tar extraction.
* ``synth``      -- synthetic Cityscapes / ADE20K archives in the real layouts.
* ``prepare``    -- extract, convert (json2labelImg trainIds), validate, manifest.
"""
