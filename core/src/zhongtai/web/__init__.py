"""Web: the Litestar app assembled from the routes plugins return."""
