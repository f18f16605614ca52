"""Build script for iipy: the Python package and its Cython kernels."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

extensions = [
    Extension(
        "iipy._kernels",
        ["ext/_kernels.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
    # the FastCGI record layer (iipy/server/fcgi.py)
    Extension("iipy._fcgi", ["ext/_fcgi.pyx"], extra_compile_args=["-O3"]),
]

setup(
    name="iipy",
    version="0.1.0",
    description=("A FastCGI image server for FITS and pyramidal TIFF files (IIP, IIIF, "
                 "DeepZoom, Zoomify), drop-in for iipsrv"),
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="GPL-3.0-or-later",
    packages=find_packages(include=["iipy", "iipy.*"]),
    package_data={"iipy.viewer": ["static/*"]},
    python_requires=">=3.11",
    install_requires=[
        "flup==1.0.3",
        "astropy>=6.0",
        "numpy>=2.0",
        # PNG, WebP and AVIF output; AVIF is in Pillow's wheels from 11.3 on
        "Pillow>=11.3",
        # JPEG tiles through libjpeg-turbo without Pillow's per-call overhead
        # (iipy/imaging/encode.py)
        "simplejpeg>=1.7",
        "pymemcache>=4.0",
        # tiled pyramidal TIFF: tifffile parses the structure, imagecodecs decodes
        # the tiles read by offset (iipy/imaging/sources/tiff.py)
        "tifffile>=2024.7.2",
        "imagecodecs>=2024.6.1",
        # Leaflet's files for the viewer of `iipy serve`, served by iipy itself so that
        # the page works without any network (iipy/viewer/assets.py)
        "XStatic-Leaflet>=1.9.3.0",
    ],
    extras_require={
        # (tifffile, a run-time requirement, also writes the pyramidal TIFFs of the
        # tests and of the reference iipsrv in the parity tests and benchmarks;
        # hypothesis drives the property-based tests of the request parsers;
        # iiif-validator is the IIIF Image API validator run against iipy in
        # tests/e2e/test_iiif_validator.py)
        "test": ["pytest>=8", "hypothesis>=6", "iiif-validator>=1.0.5"],
    },
    ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}),
    entry_points={
        "console_scripts": [
            "iipsrv.fcgi = iipy.__main__:fcgi_main",
            "iipy = iipy.cli:main",
        ],
    },
)
