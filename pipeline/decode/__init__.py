"""Everything about turning bytes into pixels: CPU decode, the isolated child, GPU decode, target sizes."""
