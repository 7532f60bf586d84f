"""fewstep's benchmark tooling: exact targets, metrics, peer libraries and the ``fewstep compare`` command.

It measures the samplers of the core package against exact answers and is not needed to sample:

* :mod:`fewstep.bench.targets` -- data distributions with closed-form denoisers (Gaussian mixtures, the
  digits data set, a small trained network) and reference probability-flow ODE solutions;
* :mod:`fewstep.bench.metrics` -- RMSE, sliced W2, MMD, mode coverage and FD-digits;
* :mod:`fewstep.bench.peers` -- diffusers' schedulers and k-diffusion's samplers on the same problem;
* :mod:`fewstep.bench.compare` -- every solver at several NFE against the exact answer (tables, CSV, JSON, plots);
* :mod:`fewstep.bench.report` -- the self-contained HTML report of a run;
* :mod:`fewstep.bench.cli` -- the ``fewstep compare`` command line (click).

Its dependencies (matplotlib, click, scikit-learn, tqdm) are the ``bench`` extra:
``pip install "fewstep[bench]"``. Importing this package imports none of them; each submodule imports what it
needs.
"""
