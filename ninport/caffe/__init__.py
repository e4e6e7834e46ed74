"""Reading Caffe files into one normalized ``Net``: schema, prototxt/caffemodel readers, upgrades, shape rules.

Nothing here imports torch: ``ninport inspect`` stays fast.
"""

from ninport.caffe.load import attach_weights, load_net, read_net
from ninport.caffe.net import Layer, Net
from ninport.caffe.shapes import NetShapes, infer_shapes

__all__ = ["Layer", "Net", "NetShapes", "attach_weights", "infer_shapes", "load_net", "read_net"]
