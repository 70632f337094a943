"""VIST2: global context compression with interleaved vision-text transformation.

Text is cut into chunks of K tokens, each chunk is rendered to an image, a ViT plus an
aligner turns the image into beta visual tokens, and later text sees only those tokens.
"""

__version__ = "0.1.0"
