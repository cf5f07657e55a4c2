"""The cross-lab wing: what carries a model trained in one lab to another lab's cells.

Not in Sasaki et al. (2020), whose model is used in the lab that trained it. A model loses much
of its accuracy on another lab's stain, camera and crop scale (docs/cross_site.md); the wing's
answers, each measured on a foreign labelled set:

* :mod:`~wbc_nnabla.sites.adaptation`: ``adapt`` (AdaBN: BatchNorm statistics re-estimated on the
  lab's unlabelled cells, and its crops re-framed to the training scale);
* :mod:`~wbc_nnabla.sites.finetune`: ``finetune`` on a few labelled cells of the lab;
* :mod:`~wbc_nnabla.sites.infomax`, :mod:`~wbc_nnabla.sites.selftraining`: ``infomax``, ``self-train``
  (measured, not adopted);
* :mod:`~wbc_nnabla.sites.domain`, :mod:`~wbc_nnabla.sites.reference`: the domain-shift check and the
  reference it compares with;
* :mod:`~wbc_nnabla.sites.framing`, :mod:`~wbc_nnabla.sites.stain`: how a site's crops are framed and
  stained for the model;
* :mod:`~wbc_nnabla.sites.settings`: the wing's settings (nnabla-free).

The paper's core reaches the wing through two declared seams only, :mod:`~wbc_nnabla.sites.seams`
(prediction and training); the wing imports the core freely.
"""
