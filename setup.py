"""wbc_nnabla: CNN white-blood-cell screening on Sony's nnabla (Sasaki et al., 2020)."""
import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "wbc_nnabla" / "__init__.py").read_text()).group(1)

setup(
    name="wbc_nnabla",
    version=VERSION,
    description=(
        "Reference nnabla implementation of Sasaki et al. (2020), CNN analysis of "
        "peripheral blood smears for leukocyte classification"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # The demo data folders hold no Python; listing them as (namespace) packages
    # is how setuptools ships their files without "data directory" warnings.
    packages=find_namespace_packages(include=["wbc_nnabla", "wbc_nnabla.*"]),
    package_data={"": ["*.jpg", "*.csv", "*.md", "*.json"],  # *.json: data/auto_choice.json (predict auto), recipes
                  # the review page: plain HTML/CSS/JS served by wbc-nnabla review (no build step, no CDN)
                  "wbc_nnabla.review": ["templates/*.html", "static/*.js", "static/*.css"]},
    # nnabla 1.39 ships wheels for CPython 3.8-3.10 only.
    python_requires=">=3.8,<3.11",
    install_requires=[
        "nnabla>=1.39,<1.40",
        "numpy",
        # Same cv2 module as opencv-python, without the GUI libraries a server lacks.
        "opencv-python-headless",
        "scipy",
        "pandas",
        "matplotlib",
        # read directly (images.image_size: an image's size from its header, before decoding);
        # matplotlib depends on it too, so nothing new is installed.
        "Pillow",
        "tqdm",
        # ONNX export for the fast CPU backends; declared here (not installed later)
        # so the resolver keeps protobuf at the 3.20 line nnabla needs.
        "onnx>=1.14,<1.18",
        # `wbc-nnabla review`'s local page (docs/review.md): a maintained WSGI micro-framework.
        "flask>=2.3",
    ],
    extras_require={
        "cuda116": ["nnabla-ext-cuda116>=1.39,<1.40"],
        "cuda120": ["nnabla-ext-cuda120>=1.39,<1.40"],
        "onnxruntime": ["onnxruntime>=1.16"],
        "test": ["pytest>=7", "pytest-xdist>=3.5", "onnxruntime>=1.16", "nbformat", "nbconvert", "ipykernel",
                 # the review page's browser tests drive Debian's chromium with its chromedriver (.ci/run)
                 "selenium>=4.10"],
    },
    entry_points={"console_scripts": ["wbc-nnabla=wbc_nnabla.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
