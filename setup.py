"""Build script for iipy: the Python package and its Cython kernels."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "iipy._kernels",
        ["ext/_kernels.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
]

setup(
    name="iipy",
    version="0.1.0",
    description="A FastCGI IIP image server for FITS files, drop-in for iipsrv",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="GPL-3.0-or-later",
    packages=["iipy"],
    package_data={"iipy": ["static/*"]},
    python_requires=">=3.11",
    install_requires=[
        "flup==1.0.3",
        "astropy>=6.0",
        "numpy>=2.0",
        "Pillow>=10.0",
        "pymemcache>=4.0",
    ],
    extras_require={
        # tifffile writes the pyramidal TIFFs that the reference iipsrv reads
        # in the parity tests and benchmarks; it is never imported by iipy.
        # hypothesis drives the property-based tests of the request parsers.
        "test": ["pytest>=8", "tifffile", "hypothesis>=6"],
    },
    ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}),
    entry_points={
        "console_scripts": [
            "iipsrv.fcgi = iipy.__main__:fcgi_main",
            "iipy = iipy.cli:main",
        ],
    },
)
