"""Caffe ``Net`` → ``torch.nn.Module``: one small converter per Caffe layer family, found by type name."""
