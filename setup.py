"""The one thing pyproject.toml cannot say: the C extension of the userspace tunnels."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gingham.dataplane.tunnel_loops",
                             ["src/gingham/dataplane/tunnel_loops.c"],
                             extra_compile_args=["-O3", "-Wall"])])
