"""dnlrepro: reproduce the DNLNet rows of the mmsegmentation 0.x model zoo (README.md)."""
