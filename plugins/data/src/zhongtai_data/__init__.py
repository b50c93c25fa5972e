"""zhongtai's data plugin: datasets, versions, uploads, previews, quality reports."""
