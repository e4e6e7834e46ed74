"""Reproducing the Network in Network paper: its tables, the data sets it used, evaluation and training.

``tables`` holds the paper's figures (no torch), ``datasets`` reads the files people download (CIFAR pickles,
SVHN ``.mat``, MNIST idx, an ImageNet folder with ``val.txt``, scikit-learn's digits), ``evaluate`` scores a
converted model on them and writes a report.
"""
