"""Binary networks that run as binary networks: a bit-packed CPU inference engine.

:mod:`bnas.deploy.kernels`: XNOR / popcount kernels (AVX-512 VPOPCNTDQ, AVX2, portable) on
bit-packed activations, exact to the float model's ``conv(sign(x), sign(W)) * alpha``.
"""
