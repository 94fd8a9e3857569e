"""Build the compiled kernels (everything else is declared in pyproject.toml)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize([Extension("sohuprof.kernels", ["sohuprof/kernels.pyx"],
                                       extra_compile_args=["-O3", "-ffp-contract=off"])],
                            compiler_directives={"language_level": "3"}, quiet=True))
