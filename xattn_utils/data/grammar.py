"""A small template grammar of English sentences with aligned Italian translations.

Sentences are ``SUBJECT VERB OBJECT [PLACE]``; noun phrases are ``DET [ADJ] NOUN``. English puts the adjective
before the noun, Italian after it, agreeing in gender and number ("the red car" -> "la macchina rossa", "two red
cars" -> "due macchine rosse"). Nouns are chosen so that Italian articles never elide (il/la/i/le/un/una).
Everything is lower case without punctuation, so transcripts are what a speaker says.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

# english singular, english plural, italian singular, italian plural, gender
NOUNS = [
    ("dog", "dogs", "cane", "cani", "m"), ("cat", "cats", "gatto", "gatti", "m"),
    ("car", "cars", "macchina", "macchine", "f"), ("house", "houses", "casa", "case", "f"),
    ("book", "books", "libro", "libri", "m"), ("boy", "boys", "ragazzo", "ragazzi", "m"),
    ("girl", "girls", "ragazza", "ragazze", "f"), ("horse", "horses", "cavallo", "cavalli", "m"),
    ("table", "tables", "tavolo", "tavoli", "m"), ("window", "windows", "finestra", "finestre", "f"),
    ("door", "doors", "porta", "porte", "f"), ("teacher", "teachers", "maestro", "maestri", "m"),
    ("river", "rivers", "fiume", "fiumi", "m"), ("mountain", "mountains", "montagna", "montagne", "f"),
    ("letter", "letters", "lettera", "lettere", "f"), ("bottle", "bottles", "bottiglia", "bottiglie", "f"),
    ("chair", "chairs", "sedia", "sedie", "f"), ("train", "trains", "treno", "treni", "m"),
    ("boat", "boats", "barca", "barche", "f"), ("flower", "flowers", "fiore", "fiori", "m"),
    ("cake", "cakes", "torta", "torte", "f"), ("bag", "bags", "borsa", "borse", "f"),
    ("doctor", "doctors", "dottore", "dottori", "m"), ("baker", "bakers", "fornaio", "fornai", "m"),
    ("farmer", "farmers", "contadino", "contadini", "m"), ("painting", "paintings", "quadro", "quadri", "m"),
    ("key", "keys", "chiave", "chiavi", "f"), ("bridge", "bridges", "ponte", "ponti", "m"),
]
# english, italian m.sg, f.sg, m.pl, f.pl
ADJECTIVES = [
    ("red", "rosso", "rossa", "rossi", "rosse"), ("small", "piccolo", "piccola", "piccoli", "piccole"),
    ("big", "grande", "grande", "grandi", "grandi"), ("old", "vecchio", "vecchia", "vecchi", "vecchie"),
    ("new", "nuovo", "nuova", "nuovi", "nuove"), ("white", "bianco", "bianca", "bianchi", "bianche"),
    ("black", "nero", "nera", "neri", "nere"), ("green", "verde", "verde", "verdi", "verdi"),
    ("beautiful", "bello", "bella", "belli", "belle"), ("fast", "veloce", "veloce", "veloci", "veloci"),
    ("yellow", "giallo", "gialla", "gialli", "gialle"), ("cold", "freddo", "fredda", "freddi", "fredde"),
    ("happy", "felice", "felice", "felici", "felici"), ("tall", "alto", "alta", "alti", "alte"),
    ("long", "lungo", "lunga", "lunghi", "lunghe"), ("quiet", "tranquillo", "tranquilla", "tranquilli", "tranquille"),
    ("heavy", "pesante", "pesante", "pesanti", "pesanti"), ("clean", "pulito", "pulita", "puliti", "pulite"),
]
# english 3sg, english plural, italian 3sg, italian 3pl
VERBS = [
    ("sees", "see", "vede", "vedono"), ("finds", "find", "trova", "trovano"), ("wants", "want", "vuole", "vogliono"),
    ("carries", "carry", "porta", "portano"), ("watches", "watch", "guarda", "guardano"),
    ("paints", "paint", "dipinge", "dipingono"), ("follows", "follow", "segue", "seguono"),
    ("buys", "buy", "compra", "comprano"), ("cleans", "clean", "pulisce", "puliscono"),
    ("opens", "open", "apre", "aprono"), ("draws", "draw", "disegna", "disegnano"),
    ("sells", "sell", "vende", "vendono"),
]
PLACES = [
    ("in the garden", "nel giardino"), ("near the river", "vicino al fiume"), ("on the road", "sulla strada"),
    ("at the station", "alla stazione"), ("in the kitchen", "in cucina"), ("every morning", "ogni mattina"),
    ("today", "oggi"), ("after dinner", "dopo cena"), ("in the evening", "la sera"), ("on monday", "lunedi"),
    ("in the village", "nel villaggio"), ("before lunch", "prima di pranzo"),
]
NUMBERS = [("two", "due"), ("three", "tre"), ("four", "quattro"), ("five", "cinque"), ("six", "sei"),
           ("seven", "sette"), ("eight", "otto"), ("ten", "dieci")]


@dataclass(frozen=True)
class Sentence:
    english: str
    italian: str


def _noun_phrase(rng: random.Random, with_adjective: bool) -> tuple[str, str, bool]:
    """(english, italian, plural) of ``DET [ADJ] NOUN``."""
    en_sg, en_pl, it_sg, it_pl, gender = rng.choice(NOUNS)
    kind = rng.choice(("the", "the", "a", "number"))
    plural = kind == "number" or (kind == "the" and rng.random() < 0.3)
    adj = rng.choice(ADJECTIVES) if with_adjective else None
    if plural:
        det_en, det_it = (rng.choice(NUMBERS) if kind == "number" else ("the", "i" if gender == "m" else "le"))
        noun_en, noun_it = en_pl, it_pl
    else:
        det_en = "the" if kind == "the" else "a"
        det_it = {("the", "m"): "il", ("the", "f"): "la", ("a", "m"): "un", ("a", "f"): "una"}[(det_en, gender)]
        noun_en, noun_it = en_sg, it_sg
    en = [det_en] + ([adj[0]] if adj else []) + [noun_en]
    it = [det_it, noun_it] + ([adj[1 + (gender == "f") + 2 * plural]] if adj else [])
    return " ".join(en), " ".join(it), plural


def sentence(rng: random.Random) -> Sentence:
    """One random sentence pair."""
    subj_en, subj_it, plural = _noun_phrase(rng, rng.random() < 0.7)
    obj_en, obj_it, _ = _noun_phrase(rng, rng.random() < 0.6)
    v = rng.choice(VERBS)
    en = [subj_en, v[1] if plural else v[0], obj_en]
    it = [subj_it, v[3] if plural else v[2], obj_it]
    if rng.random() < 0.6:
        place = rng.choice(PLACES)
        en.append(place[0])
        it.append(place[1])
    return Sentence(" ".join(en), " ".join(it))


def vocabulary() -> set[str]:
    """Every word the grammar can produce (English and Italian)."""
    words: set[str] = set()
    for table in (NOUNS, ADJECTIVES, VERBS, PLACES, NUMBERS):
        for row in table:
            for item in row:
                if item not in ("m", "f"):
                    words.update(item.split())
    return words | {"the", "a", "il", "la", "i", "le", "un", "una"}
