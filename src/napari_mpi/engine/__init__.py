"""The engine: pure torch / numpy, no Qt, napari or command line. One module per job:

- ``fill``: Algorithm 1 (the iterative fill) on one plane, as a generator of steps;
- ``estimates``: the running means the fill's estimate is made of;
- ``auto``: the "auto" preset's self-supervised stopping;
- ``chain``: a stack's network carried from plane to plane, and the per-plane check whether to;
- ``windows``: training on random windows of a big plane;
- ``tiles``: overlapping tiles for planes too big for the device's memory;
- ``cuda_graph``: the training step captured and replayed on CUDA;
- ``devices``: device, precision, memory estimates and out-of-memory recognition;
- ``plane``: one numpy plane through normalisation, the fill (with its fallbacks) and the refinement;
- ``network``, ``masking``, ``refine``, ``noise``: the network, the masks, the Wiener refinement, the noise check.
"""
