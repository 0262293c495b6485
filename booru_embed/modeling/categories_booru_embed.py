"""Token categories and ratings: the one definition every other module imports.

Remote code: copied next to the weights with the tokenizer and model files, so it imports nothing.

Every token of a post carries a category id, embedded and added to its token embedding:
0 special (``<pad> <cls> <mask>`` and unused rows), 1 rating, 2 score bucket, then the five Danbooru
tag categories. Danbooru itself numbers them differently (0 general, 1 artist, 3 copyright,
4 character, 5 meta), which is what exports and metadata dumps carry: ``DANBOORU_CATEGORY_NAMES``.
"""

CATEGORY_NAMES = ("special", "rating", "score", "general", "artist", "copyright", "character", "meta")
CATEGORY_IDS = {name: index for index, name in enumerate(CATEGORY_NAMES)}
SPECIAL_CATEGORY_ID = CATEGORY_IDS["special"]
TAG_CATEGORIES = ("general", "artist", "copyright", "character", "meta")
TAG_CATEGORY_IDS = tuple(CATEGORY_IDS[name] for name in TAG_CATEGORIES)
# Canonical order of a post's tags and, read left to right, the truncation priority.
PRIORITY_ORDER = ("character", "copyright", "artist", "general", "meta")
# Danbooru's own category numbers, as in tags.csv, booru-chars and the danbooru2023/2024 metadata.
DANBOORU_CATEGORY_NAMES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta"}

RATINGS = ("g", "s", "q", "e")
RATING_ALIASES = {"general": "g", "sensitive": "s", "questionable": "q", "explicit": "e"}

__all__ = [
    "CATEGORY_IDS", "CATEGORY_NAMES", "DANBOORU_CATEGORY_NAMES", "PRIORITY_ORDER", "RATINGS", "RATING_ALIASES",
    "SPECIAL_CATEGORY_ID", "TAG_CATEGORIES", "TAG_CATEGORY_IDS",
]
