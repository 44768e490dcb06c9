"""Stop-word lists for classification data: English and Chinese.

English: the classic NLTK/Snowball-style list of function words (no negations: "not", "no",
"nor" and "n't" forms are kept because they carry sentiment). Chinese: common function words
and particles (的, 了, 是, ...), likewise without negations (不, 没, 没有, 别).
"""

ENGLISH = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
let me more most my myself of off on once only or other ought our ours ourselves out over own
same she should so some such than that the their theirs them themselves then there these they
this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves 's 're 've 'd 'll 'm
""".split())

CHINESE = frozenset("""
的 了 是 在 和 与 及 或 而 也 就 都 又 还 被 把 将 对 从 向 于 以 为 之 其 这 那 这个 那个 这些 那些 这样
那样 这里 那里 我 我们 你 你们 他 他们 她 她们 它 它们 自己 啊 吧 呢 吗 嘛 呀 哦 哈 么 着 过 得 地 个
一个 一些 有些 什么 怎么 如何 因为 所以 但是 但 然后 而且 并且 如果 虽然 可是 即 则 等 等等 之类 一下
""".split())

NAMES = {"en": ENGLISH, "zh": CHINESE}
