"""Wire formats, pure: the two dialects, input lines, translation both ways, SSE assembly, replies."""
