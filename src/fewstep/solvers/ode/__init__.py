"""The probability-flow ODE solvers, one module each (or one family per module); every module here is imported by
:mod:`fewstep.solvers`, which registers its solvers."""
