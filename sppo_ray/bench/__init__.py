"""`sppo-ray bench`: each benchmark in its own module, run by :mod:`sppo_ray.bench.runner`.

Benchmarks import the product's roles; nothing in the product imports this package.
"""
