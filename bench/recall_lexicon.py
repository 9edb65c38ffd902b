"""The curated material `bench.recall_data` builds its conversations from: personal traits
(each with several surface forms and a question that shares no content word with them),
relatives whose news needs two turns to connect, and the small talk around it all.

Placeholders: {v} a trait's value, {a_v} the same with its article, {p} a pet's name, {when}
a time relative to the session ("yesterday"), {x} a relative's name, {rel} the relation,
{pron}/{obj}/{pos} the relative's pronouns, {other} the other speaker's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- personal traits ----------------------------------------------------------------------


@dataclass(frozen=True)
class Trait:
    category: str
    values: tuple[str, ...]
    # The first mention; with {when} when it is an event the session date dates.
    debut: tuple[str, ...]
    # Later mentions by the same speaker, in other sessions.
    mentions: tuple[str, ...]
    # Single-hop, paraphrased: no content word in common with any form above.
    question: str
    answer: str
    # Temporal: "When did {name} <event>?", asked of the debut when it carries {when}.
    event: str = ""
    vague_event: str = ""  # the same event without the words of the turn
    doing: str = ""  # the same event as a gerund, for "which came first" questions
    # Inference beyond the text: value -> (question, answer); "*" for any value.
    open: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Someone else's similar fact, said in passing (a different value): distractors.
    asides: tuple[str, ...] = ()
    # The other speaker asking about it in a later session (not evidence: no answer in it).
    follow_ups: tuple[str, ...] = ()


TRAITS: tuple[Trait, ...] = (
    Trait(
        "instrument",
        ("cello", "violin", "ukulele", "saxophone", "trumpet", "banjo", "clarinet", "harp", "accordion"),
        debut=(
            "Okay so I finally did it, I bought {a_v} {when}! Been wanting one since I was a kid",
            "Started {v} lessons {when}, my teacher is this tiny old lady who is terrifyingly good",
        ),
        mentions=(
            "Finally got my {v} back from the repair shop!",
            "Spent the whole evening practicing {v} scales, my fingers are killing me",
            "My {v} teacher says my tone is getting way better, I almost cried haha",
            "Dragged my {v} to the park and a little kid asked me for a song, it was adorable",
            "Broke a string on my {v} in the middle of practice, scared the cat half to death",
        ),
        question="Which instrument does {name} play?",
        answer="the {v}",
        event="start on the {v}",
        vague_event="take up a musical instrument",
        doing="starting on the {v}",
        open={
            "*": (
                "Would {name} likely enjoy going to a live orchestra concert?",
                "Yes, probably: {name} plays the {v}.",
            )
        },
        asides=(
            "My nephew just started {v} lessons, it's a lot of squeaking right now haha",
            "There was a guy busking with {a_v} outside the station today, he was really good",
        ),
        follow_ups=("How's the music going, still at it?", "Are you still practicing every day?"),
    ),
    Trait(
        "pet",
        ("corgi", "beagle", "tabby kitten", "rabbit", "parrot", "tortoise", "ferret", "greyhound"),
        debut=(
            "Big news, I adopted {a_v} {when}! Named him {p}",
            "So {when} I went to the shelter 'just to look' and came home with {a_v}. His name is {p}",
        ),
        mentions=(
            "{p} chewed through my phone charger again, this {v} is a menace",
            "Had to take {p} to the vet, turns out my {v} just ate too fast haha",
            "{p} sleeps on my laptop bag every morning, classic {v}",
            "Bought {p} a tiny raincoat. Yes I am that person now. My {v} looks ridiculous",
        ),
        question="What kind of animal lives with {name}?",
        answer="{a_v} named {p}",
        event="adopt {p}",
        vague_event="bring home an animal companion",
        doing="adopting {p}",
        open={
            "*": (
                "Would {name} need someone to look after things at home during a long trip abroad?",
                "Yes, {name} has {a_v}, {p}.",
            )
        },
        asides=(
            "My neighbour's {v} keeps getting into our garden, it's chaos",
            "Saw the cutest {v} on the bus this morning, I almost missed my stop",
        ),
        follow_ups=("How's the little guy doing?", "Is he still destroying everything you own? haha"),
    ),
    Trait(
        "profession",
        (
            "nurse",
            "pharmacist",
            "chemistry teacher",
            "electrician",
            "accountant",
            "paramedic",
            "architect",
            "dental hygienist",
            "firefighter",
            "librarian",
        ),
        debut=("First day as {a_v} {when}, I was so nervous I forgot my own badge",),
        mentions=(
            "Long shift today. Being {a_v} is no joke, my feet are done",
            "Another {v} on my team quit, so I'm covering extra hours this month",
            "Honestly I love being {a_v}, even on the awful days",
            "One of the other {v}s brought donuts in today, small wins",
        ),
        question="What is {name}'s profession?",
        answer="{a_v}",
        event="begin as {a_v}",
        vague_event="report for a first day at the job",
        doing="beginning as {a_v}",
        open={"*": ("Does {name} hold a job that needs formal training or a licence?", "Yes, {name} is {a_v}.")},
        asides=("My cousin just qualified as {a_v}, the whole family is so proud",),
        follow_ups=("How's the job treating you lately?", "Still working crazy hours?"),
    ),
    Trait(
        "pastime",
        (
            "pottery",
            "rock climbing",
            "salsa",
            "woodworking",
            "watercolor",
            "improv",
            "kickboxing",
            "sourdough baking",
            "beekeeping",
            "archery",
        ),
        debut=(
            "I signed up for a {v} class {when}! First session was way harder than it looked",
            "Went to my first {v} workshop {when}, and I'm hooked already",
        ),
        mentions=(
            "My {v} instructor said I'm a natural. She says that to everyone I bet haha",
            "Spent four hours on {v} stuff on Saturday and didn't even notice the time",
            "Bought my own {v} gear, so now I have to keep going, right?",
            "Our {v} group is going out for drinks after class on Friday",
        ),
        question="What new pastime has {name} picked up?",
        answer="{v}",
        event="start {v}",
        vague_event="take up the new pastime",
        doing="starting {v}",
        open={
            "pottery": ("Would {name} appreciate a voucher for a ceramics studio?", "Yes, {name} does pottery."),
            "rock climbing": ("Is {name} comfortable with heights?", "Probably yes, {name} goes rock climbing."),
            "salsa": ("Would {name} enjoy a Latin dance night?", "Yes, {name} takes salsa classes."),
            "woodworking": ("Could {name} build a simple bookshelf?", "Likely yes, {name} does woodworking."),
            "watercolor": ("Would {name} enjoy an art supply store?", "Yes, {name} paints watercolors."),
            "improv": ("Is {name} comfortable performing on stage?", "Likely yes, {name} does improv."),
            "kickboxing": ("Does {name} do any martial arts?", "Yes, {name} does kickboxing."),
            "sourdough baking": ("Would {name} appreciate a bread proofing basket?", "Yes, {name} bakes sourdough."),
            "beekeeping": ("Might {name} have honey to give away?", "Yes, {name} keeps bees."),
            "archery": ("Would {name} enjoy a medieval festival with a bow range?", "Likely, {name} does archery."),
        },
        asides=("My coworker keeps trying to drag me to {v} with her, not my thing",),
        follow_ups=("Are you still going to that class?", "How's the class going? Any good yet? haha"),
    ),
    Trait(
        "hometown",
        ("Porto", "Krakow", "Glasgow", "Valencia", "Montreal", "Cork", "Lyon", "Adelaide", "Bergen", "Tucson"),
        debut=(),
        mentions=(
            "I grew up in {v}, so this weather honestly feels like summer to me",
            "Going back to {v} for a few days, haven't seen my old neighbourhood in ages",
            "Nothing beats the bakeries back in {v}, I miss them every single day",
            "My parents still live in {v}, in the same house I grew up in",
        ),
        question="Where was {name} raised?",
        answer="{v}",
        open={"*": ("Does {name} have ties to a city outside the one where they now reside?", "Yes, {v}.")},
        asides=("My old roommate moved to {v} last year, she loves it there",),
    ),
    Trait(
        "diet",
        ("vegetarian", "vegan", "lactose intolerant", "allergic to peanuts", "allergic to shellfish", "celiac"),
        debut=(),
        mentions=(
            "Ordered the mushroom risotto, the one safe thing on the menu since I'm {v}",
            "The wedding menu had nothing for me, being {v} at these things is the worst",
            "Had to double check everything at the buffet again since I'm {v}",
            "My mum still forgets I'm {v}, every single holiday",
        ),
        question="Are there foods {name} avoids?",
        answer="yes, {name} is {v}",
        open={
            "vegetarian": ("Would {name} enjoy a steakhouse dinner?", "Probably not, {name} is vegetarian."),
            "vegan": ("Would {name} order a cheese platter?", "No, {name} is vegan."),
            "lactose intolerant": ("Would {name} enjoy a milkshake bar?", "Probably not, lactose intolerance."),
            "allergic to peanuts": ("Is a satay takeaway a good idea for {name}?", "No, peanut allergy."),
            "allergic to shellfish": ("Would {name} order a seafood platter?", "No, shellfish allergy."),
            "celiac": ("Could {name} share an ordinary pizza?", "No, {name} is celiac (no gluten)."),
        },
        asides=("My brother went {v} this year, family dinners are interesting now",),
    ),
    Trait(
        "exercise",
        ("running", "swimming", "cycling", "yoga", "rowing", "bouldering", "tennis", "hiking"),
        debut=(),
        mentions=(
            "Did an hour of {v} before breakfast, legs are jelly now",
            "Skipped {v} all week because of the rain and I feel gross",
            "My {v} buddy moved away so I'm going solo now, it's harder to stay motivated",
            "New personal best at {v} today! Okay it was a small one but still",
        ),
        question="How does {name} keep fit?",
        answer="{v}",
        open={"*": ("Does {name} lead an active lifestyle?", "Yes, {name} does {v} regularly.")},
        asides=("My dad took up {v} at sixty, he's fitter than me now haha",),
        follow_ups=("Are you still doing your morning routine?",),
    ),
    Trait(
        "language",
        ("Japanese", "Portuguese", "Korean", "Italian", "Greek", "Dutch", "Turkish", "Swedish"),
        debut=("Downloaded a {v} app {when} and now I'm doing flashcards on the bus like a nerd",),
        mentions=(
            "My {v} flashcards say I'm on a forty day streak!",
            "Tried ordering in {v} at that restaurant and the waiter answered in English haha",
            "{v} grammar is breaking my brain, why are there so many verb forms",
            "Watched a whole {v} movie without subtitles. Understood maybe half but still",
        ),
        question="Which foreign tongue is {name} studying?",
        answer="{v}",
        event="begin with {v}",
        vague_event="begin studying a foreign tongue",
        doing="beginning {v}",
        open={"*": ("Might {name} be planning travel abroad?", "Possibly, {name} is learning {v}.")},
        asides=("My sister speaks fluent {v}, I'm so jealous",),
        follow_ups=("How are the lessons going?",),
    ),
    Trait(
        "reading",
        (
            "murder mysteries",
            "science fiction",
            "poetry",
            "biographies",
            "fantasy novels",
            "graphic novels",
            "romance novels",
            "history books",
        ),
        debut=(),
        mentions=(
            "Stayed up till 2am finishing one of my {v}, could not put it down",
            "I've read like six {v} this month, my shelf is overflowing",
            "Went to a used bookshop and came out with a stack of {v}, no regrets",
            "The book club wants to switch away from {v} and I'm not having it",
        ),
        question="What genre of literature appeals to {name}?",
        answer="{v}",
        open={"*": ("Would {name} appreciate a bookstore gift card?", "Yes, {name} reads a lot of {v}.")},
        asides=("My partner only reads {v}, we never agree on anything haha",),
    ),
    Trait(
        "commute",
        ("bike", "scooter", "train", "ferry", "tram", "motorbike"),
        debut=(),
        mentions=(
            "My {v} got delayed again this morning, I was twenty minutes late",
            "Took the {v} in and there was a guy with a full drum kit, only in this city",
            "Honestly the {v} is the only quiet part of my day",
            "Rode the {v} in the pouring rain, arrived absolutely soaked",
        ),
        question="How does {name} travel to the office?",
        answer="by {v}",
        open={"*": ("Is {name} likely to be affected by a public transit strike or bad weather?", "Yes, {v}.")},
        asides=("My coworker takes the {v} every day, she swears by it",),
    ),
    Trait(
        "partner",
        ("girlfriend", "boyfriend", "wife", "husband", "fiance", "fiancee"),
        debut=(),
        mentions=(
            "My {v} {p} surprised me with concert tickets last night!",
            "{p} and I have been together four years now, crazy right",
            "Cooked dinner for {p} tonight, my {v} says it was the best lasagna ever. Lies but sweet",
        ),
        question="Who is {name} in a romantic relationship with?",
        answer="{p}",
        open={"*": ("Is {name} single?", "No, {name} has a {v}, {p}.")},
        asides=("My friend's {v} just planned a whole surprise trip for her, goals",),
    ),
    Trait(
        "injury",
        ("sprained ankle", "broken wrist", "torn ligament", "dislocated shoulder", "cracked rib"),
        debut=(
            "So I ended up at the emergency room {when}, {a_v}. Slipped on the stairs like an idiot",
            "Update: {a_v}. Happened {when} during a stupid game of frisbee",
        ),
        mentions=(
            "The {v} is healing slowly, the physio says another month",
            "Typing this one handed thanks to the {v}, forgive the typos",
        ),
        question="What medical problem did {name} suffer?",
        answer="{a_v}",
        event="get the {v}",
        vague_event="get hurt",
        doing="getting the {v}",
        open={"*": ("Would {name} have needed physiotherapy at some point?", "Likely yes, after {a_v}.")},
        asides=("My teammate got {a_v} at the match on Sunday, it looked awful",),
        follow_ups=("How's the recovery going?",),
    ),
    Trait(
        "trip",
        ("Japan", "Iceland", "Peru", "Morocco", "Vietnam", "New Zealand", "Norway", "Mexico"),
        debut=("Just got back from {v} {when}! The food was unreal, I'm still jet lagged",),
        mentions=(
            "Still going through my photos from {v}, I took way too many",
            "I keep thinking about that market in {v}, I want to go back already",
        ),
        question="Which country did {name} visit on holiday?",
        answer="{v}",
        event="return from {v}",
        vague_event="arrive home from the overseas holiday",
        doing="coming back from {v}",
        open={"*": ("Does {name} enjoy traveling overseas?", "Yes, {name} went to {v}.")},
        asides=("My boss is going to {v} next month, I'm so jealous",),
        follow_ups=("Have you sorted through all those travel photos yet?",),
    ),
)

PET_NAMES = ("Biscuit", "Pickle", "Mochi", "Waffles", "Ziggy", "Pepper", "Noodle", "Gus", "Bean", "Olive", "Tofu")
PARTNER_NAMES = {
    "f": ("Lena", "Priya", "Ines", "Hana", "Sofia", "Amara", "Freya"),
    "m": ("Theo", "Marcus", "Jonah", "Felix", "Dario", "Omar", "Milan"),
}
FEMININE = ("girlfriend", "wife", "fiancee")

# --- relatives: who they are, then their news by name only (multi-hop) ---------------------

RELATIONS: tuple[tuple[str, str], ...] = (
    ("sister", "f"), ("brother", "m"), ("mum", "f"), ("dad", "m"), ("cousin", "f"), ("cousin", "m"),
    ("best friend", "f"), ("best friend", "m"), ("roommate", "f"), ("roommate", "m"), ("aunt", "f"), ("uncle", "m"),
)  # fmt: skip

RELATIVE_NAMES = {
    "f": ("Ana", "Clara", "Nadia", "Ruth", "Elena", "Zoe", "Mira", "Greta", "Lucy", "Paula", "Jade", "Tess"),
    "m": ("Tom", "Luis", "Ivan", "Ben", "Karim", "Oscar", "Leo", "Sam", "Niko", "Hugo", "Ravi", "Eli"),
}
PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}

# Who the relative is: the relation and name together, with no news.
RELATIVE_INTROS = (
    "My {rel} {x} is staying with me this week, {pron} says hi by the way",
    "Had dinner with my {rel} {x} last night, {pron} talked my ear off haha",
    "Spent Sunday helping my {rel} {x} paint {pos} kitchen, I'm covered in yellow",
    "My {rel} {x} called me for like two hours yesterday, we hadn't talked in ages",
    "Took my {rel} {x} out for {pos} birthday, we ended up at karaoke somehow",
)


@dataclass(frozen=True)
class RelativeNews:
    text: str  # says the relative's name, never the relation
    question: str  # asks through the relation, e.g. "{name}'s {rel}"
    answer: str
    event: str = ""  # "When did {name}'s {rel} <event>?"
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra placeholders


RELATIVE_NEWS = (
    RelativeNews(
        "{x} is moving to {city} next month for a job, I'm gonna miss {obj} so much",
        "Which city is {name}'s {rel} relocating to?",
        "{city}",
        "announce the move to {city}",
        {"city": ("Lisbon", "Toronto", "Berlin", "Seoul", "Dublin", "Melbourne", "Oslo", "Nairobi")},
    ),
    RelativeNews(
        "{x} got engaged {when}!! I cried more than {pron} did",
        "What big personal milestone did {name}'s {rel} reach?",
        "{pron} got engaged",
        "get engaged",
    ),
    RelativeNews(
        "{x} finally got the job at {org}, {pron} has been trying for years",
        "Where was {name}'s {rel} hired?",
        "{org}",
        choices={
            "org": (
                "the children's hospital",
                "a video game studio",
                "the city museum",
                "a wind farm company",
                "the national library",
                "a vineyard",
                "the aquarium",
                "a law firm",
            )
        },
    ),
    RelativeNews(
        "{x} ran {pos} first marathon {when}, under four hours!",
        "What athletic achievement did {name}'s {rel} pull off?",
        "a first marathon in under four hours",
        "complete the marathon",
    ),
    RelativeNews(
        "{x} is opening {a_shop} downtown, the grand opening is in a few weeks",
        "What business is {name}'s {rel} launching?",
        "{a_shop}",
        choices={
            "a_shop": (
                "a bakery",
                "a bike repair shop",
                "a plant store",
                "a tattoo studio",
                "a coffee cart",
                "a bookshop",
                "a ramen bar",
            )
        },
    ),
    RelativeNews(
        "{x} fell off a ladder {when} and broke {pos} arm, {pron} is okay though",
        "What happened to {name}'s {rel} in the accident?",
        "{pron} broke {pos} arm falling off a ladder",
        "fall off the ladder",
    ),
    RelativeNews(
        "{x} adopted a {animal} and sends me pictures of it every hour",
        "Which pet did {name}'s {rel} take in?",
        "a {animal}",
        choices={"animal": ("husky", "cockatoo", "hedgehog", "pug", "maine coon", "gecko")},
    ),
    RelativeNews(
        "{x} passed {pos} driving test on the fourth try {when}, we're all relieved",
        "What did {name}'s {rel} finally accomplish after several attempts?",
        "passed {pos} driving test",
        "pass the driving test",
    ),
)

# --- small talk ----------------------------------------------------------------------------

GREETINGS = (
    "Hey {other}! Long time no talk, how have you been?",
    "Hiii {other}, how's your week going?",
    "{other}! Good to hear from you. What's new?",
    "Hey you, how was your weekend?",
    "Morning {other}! Got a minute to chat?",
    "Heyyy, sorry I went quiet, life has been a lot. How are you?",
    "Hi {other}, hope you're doing well!",
)
GREETING_REPLIES = (
    "Hey! Pretty good actually, busy but good. You?",
    "Ugh, tired, but hanging in there haha. How about you?",
    "Not bad at all! Been a crazy couple of weeks though",
    "Hiii! All good here, just got home",
    "Good good! Always happy to chat with you",
    "Honestly a bit of a mess but I'm okay. What's up with you?",
)
CLOSINGS = (
    "Okay I have to run, talk soon!",
    "Gotta go make dinner, catch you later!",
    "Alright, I'm off to bed, this was nice",
    "Let's talk again soon, take care!",
    "I need to get back to it, bye for now!",
)
CLOSING_REPLIES = ("Bye! Take care", "Talk soon!", "Night night!", "Later! Good luck with everything", "See ya!")

REACTIONS = (
    "haha yes", "Wait really?", "No way!", "Oh wow", "Tell me more", "Haha I love that", "Seriously? Wow",
    "That's wild", "Ha, I can totally picture it", "Oh, how's that going?",
    "Whoa, I didn't see that coming", "Hah, of course", "Oh nice", "Wow, really?", "Hmm, interesting",
    "Oh my god haha", "Huh, I had no idea", "That's so you haha", "Good to know!",
)  # fmt: skip
# Said after a reaction now and then, so that reactions are not all the same few lines.
REACTION_TAILS = (
    " Tell me everything", " When was this?", " How do you feel about it?", " I need details",
    " That's so typical of you", " I would never have guessed", " Keep me posted", " You never told me that!",
    " Good for you", " How did that happen?", " Honestly I'm not surprised", " That's a lot to take in",
)  # fmt: skip
BACKCHANNELS = ("mhm", "go on", "haha", "right", "yeah?", "oh?", "totally", "for sure")
PROMPTS = (
    "So what's new with you?", "Anything exciting happening on your end?", "How's everything else?",
    "Any news?", "Tell me something good", "What have you been up to?", "Anyway, enough about me. You?",
    "What about you, anything new?", "And you? What's going on?", "Oh also, how's your week been?",
    "Okay your turn, what's happening?", "How are things with you these days?",
)  # fmt: skip

# Small talk exchanges: (opener, reply), spoken by either speaker. {other} is the listener.
SMALL_TALK = (
    ("Is it raining where you are too? It hasn't stopped all week", "Yes! I forgot what the sun looks like"),
    ("It's so hot today, I'm melting", "Same, I've been sitting in front of the fan all afternoon"),
    ("Did you catch the game last night?", "Only the second half, that ending though!"),
    ("I've been sleeping so badly lately", "Same, I think it's the heat. Or my phone haha"),
    ("Work has been absolutely insane this week", "Ugh, hope it calms down soon"),
    ("Any plans for the weekend?", "Not really, maybe a movie and a lot of sleep"),
    ("I finally watched that show everyone talks about", "And?? Was it worth the hype?"),
    ("My landlord still hasn't fixed the heating", "That's ridiculous, you should call them again"),
    ("Traffic was a nightmare this morning", "Ugh, was there an accident or something?"),
    ("I made pancakes this morning and they were actually round for once", "Look at you, chef"),
    ("I need a vacation so badly", "Don't we all"),
    ("Did you see the news about the new shopping center?", "Yeah, apparently it opens next spring"),
    ("My phone screen cracked again", "Again?? You need a better case haha"),
    ("I spent the whole Saturday cleaning my flat", "Productive! Mine is a disaster right now"),
    ("Have you tried that new ramen place near the square?", "Not yet, is it good?"),
    ("I think I'm getting a cold", "Oh no, drink lots of tea and rest"),
    ("The neighbours were having a party until 3am", "Ugh, that's the worst, did you say anything?"),
    ("I got a parking ticket today, I was gone for five minutes!", "That's so unfair, I'm sorry"),
    ("My internet went down for the whole day yesterday", "I would not survive that haha"),
    ("I started a new podcast about space, it's so good", "Send me the name! I need something for walks"),
    ("Can you believe it's already this time of the year?", "I know, time is flying"),
    ("I've been trying to drink less coffee", "How's that going? I could never"),
    ("Went to a friend's birthday last night, I'm so tired today", "Haha worth it though?"),
    ("My plants are all dying, I don't get it", "Maybe too much water? That's what kills mine"),
    ("I finally finished that huge report", "Yay, time to celebrate!"),
    ("The power went out in the whole building yesterday", "Spooky! Did it come back quickly?"),
    ("I've been watching so many cooking videos lately", "Have you actually cooked any of it? haha"),
    ("I tried meditating this week", "Did it help? I can never sit still long enough"),
    ("Our team got a new manager", "Oh, what are they like?"),
    ("I spilled coffee all over my keyboard", "Noooo, does it still work?"),
    ("There's a street festival in town this weekend", "Oh fun, are you going?"),
    ("I'm thinking of redecorating my living room", "Ooh, any ideas yet?"),
    ("The bus driver today was singing the whole ride", "That's honestly the best thing I've heard all week"),
    ("Did you ever end up fixing your laptop?", "Kind of, it works if I don't touch it haha"),
    ("I baked cookies and ate half of them before they cooled", "Relatable"),
    ("My mum keeps sending me articles about saving money", "Haha mums are the same everywhere"),
)
ANSWERS_TO_FOLLOW_UPS = (
    "Good! Slowly getting better at it",
    "Honestly up and down, but I'm enjoying it",
    "Better than last time we talked, thanks for asking",
    "Ha, it's going. Some days are better than others",
    "Still at it! I'll tell you more next time",
)
BACK_REFERENCES = (
    ("Remember the advice you gave me last time? It actually worked", "Haha glad it was useful!"),
    ("I was telling a friend about our chat from last week haha", "Only good things I hope"),
    ("Did that thing you mentioned last time ever work out?", "Kind of! Still figuring it out"),
    ("Oh and thanks again for listening the other day, it helped", "Aw, anytime"),
    ("I keep thinking about what you said last time we talked", "Haha in a good way?"),
)

SPEAKER_NAMES = (
    "Maya", "Daniel", "Aisha", "Tomas", "Sara", "Kenji", "Lucia", "Owen", "Fatima", "Jonas", "Chloe", "Mateo",
    "Grace", "Ibrahim", "Nora", "Victor", "Elif", "Rafael", "Hannah", "Kwame", "Julia", "Arjun", "Rosa", "Peter",
)  # fmt: skip

CAREER_CHANGES = (
    "I handed in my notice {when}! Going to be {a_v} from next month, wish me luck",
    "Big decision: I quit {when}. Retraining to become {a_v}, terrifying but exciting",
)

# Weekend outings, combined: many distinct lines of small talk.
OUTINGS = (
    "the flea market", "the lake", "my friend's barbecue", "the botanical garden", "a pub quiz", "the cinema",
    "a car boot sale", "the beach", "an escape room", "a board game cafe", "the science museum", "a food market",
    "a wine tasting", "a comedy night", "the zoo", "an open air concert",
)  # fmt: skip
OUTING_LINES = (
    "Went to {place} on Saturday, it was {adj}",
    "We ended up at {place} last night, honestly {adj}",
    "Spent Sunday afternoon at {place}, {adj}",
)
OUTING_ADJECTIVES = ("so much fun", "kind of a disaster haha", "way too crowded", "really relaxing", "pretty weird")
OUTING_REPLIES = (
    "Ooh, I've always wanted to go there",
    "Haha sounds like a good time",
    "I went there once years ago, is it still the same?",
    "Nice, you have to take me next time",
)
