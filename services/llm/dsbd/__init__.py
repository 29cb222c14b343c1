"""Dynamic-width speculative beam decoding (Qin et al., arXiv 2409.16560): see ``dsbd.api``."""
