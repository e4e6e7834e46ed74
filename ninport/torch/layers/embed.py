"""Embed (Caffe's embed_layer.cpp): a lookup table indexed by the bottom's integer values."""
