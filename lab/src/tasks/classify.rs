//! Generators of the classification tasks: topic, sentiment and the GLUE-style sentence-pair tasks. Each input is
//! assembled from small phrase lists so that the label follows from the words, as in the real datasets.

use super::pick::{chance, distinct, int, one, CITIES, COUNTRIES, FIRST_NAMES, ORGS, PEOPLE};
use super::sample::Sample;
use rand::rngs::StdRng;

fn sample(vars: Vec<(&'static str, String)>, completion: impl Into<String>) -> Sample {
    Sample { vars, completion: completion.into() }
}

pub fn customer_support(rng: &mut StdRng) -> Sample {
    const INTENTS: &[(&str, &[&str])] = &[
        (
            "replace card",
            &[
                "I lost my debit card and need a new one",
                "my card was stolen last night, please send a replacement",
                "the chip on my credit card stopped working, can I get another card",
            ],
        ),
        (
            "transfer money",
            &[
                "I want to move {n} dollars from savings to checking",
                "please send {n} dollars to my sister's account",
                "can you transfer {n} dollars between my accounts",
            ],
        ),
        (
            "check balance",
            &[
                "how much money is in my checking account",
                "what is my current balance",
                "can you tell me the balance on my savings",
            ],
        ),
        (
            "order checks",
            &[
                "I need to order a new book of checks",
                "I'm out of checks, can you send me more",
                "please order {n} checks for my business account",
            ],
        ),
        (
            "pay bill",
            &[
                "I want to pay my electricity bill of {n} dollars",
                "can I pay my phone bill from my checking account",
                "please pay the water bill that is due",
            ],
        ),
        (
            "reset password",
            &[
                "I forgot my online banking password",
                "I'm locked out of the app and need a new password",
                "my password doesn't work anymore, can you reset it",
            ],
        ),
        (
            "schedule appointment",
            &[
                "I'd like to book a meeting with a loan officer on {day}",
                "can I schedule an appointment at the branch for {day}",
                "I want to see an advisor on {day} morning",
            ],
        ),
        (
            "get branch hours",
            &[
                "what time does the {city} branch open on {day}",
                "is the {city} branch open on {day}",
                "when does your {city} office close",
            ],
        ),
        (
            "none of the above",
            &[
                "I want to complain about the music on your hold line",
                "do you sell travel insurance",
                "I'm calling to say the parking lot lights are out",
            ],
        ),
    ];
    const OPENERS: &[&str] = &["Hi,", "Hello,", "Good morning,", "Yes, hi,", "Hey there,", ""];
    const DAYS: &[&str] = &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    let (label, phrases) = INTENTS[int(rng, 0, INTENTS.len() as i64 - 1) as usize];
    let text = one(rng, phrases)
        .replace("{n}", &(int(rng, 2, 90) * 10).to_string())
        .replace("{day}", one(rng, DAYS))
        .replace("{city}", one(rng, CITIES));
    let name = one(rng, FIRST_NAMES);
    let text = format!("{} this is {name}, {text}. Thanks.", one(rng, OPENERS)).trim().to_string();
    sample(vec![("text", text)], label)
}

pub fn dbpedia(rng: &mut StdRng) -> Sample {
    const KINDS: &[(&str, &[&str])] = &[
        (
            "Company",
            &[
                "{T} is a company founded in {y} that makes {thing}.",
                "{T} is a manufacturer of {thing} headquartered in {c}.",
            ],
        ),
        (
            "EducationalInstitution",
            &[
                "{T} is a public university in {c}, founded in {y}.",
                "{T} is a secondary school in {c} with about {n} students.",
            ],
        ),
        (
            "Artist",
            &[
                "{P} is a painter and sculptor born in {c} in {y}.",
                "{P} is a singer-songwriter from {c} whose debut record came out in {y}.",
            ],
        ),
        (
            "Athlete",
            &[
                "{P} is a professional footballer from {c} who plays as a striker.",
                "{P} is a long-distance runner who won a medal in {y}.",
            ],
        ),
        (
            "OfficeHolder",
            &[
                "{P} served as the mayor of {c} from {y}.",
                "{P} is a politician who was elected to parliament for {c} in {y}.",
            ],
        ),
        (
            "MeanOfTransportation",
            &["The {T} is a passenger ship launched in {y}.", "The {T} is a light aircraft first flown in {y}."],
        ),
        (
            "Building",
            &["{T} is a historic hotel in {c} built in {y}.", "{T} is an office tower in {c} with {n} floors."],
        ),
        (
            "NaturalPlace",
            &["{T} is a mountain in {k} with an elevation of {n} metres.", "{T} is a lake in northern {k}."],
        ),
        ("Village", &["{T} is a village in {k} with a population of {n}.", "{T} is a small village near {c}."]),
        ("Animal", &["The {T} is a species of moth found in {k}.", "The {T} is a small songbird of the finch family."]),
        ("Plant", &["{T} is a flowering plant native to {k}.", "{T} is a species of fern that grows in damp forests."]),
        (
            "Album",
            &["{T} is the third studio album by {P}, released in {y}.", "{T} is a live album recorded in {c} in {y}."],
        ),
        (
            "Film",
            &["{T} is a {y} drama film directed by {P}.", "{T} is a comedy film shot in {c} and released in {y}."],
        ),
        ("WrittenWork", &["{T} is a novel by {P} published in {y}.", "{T} is a weekly newspaper published in {c}."]),
    ];
    const WORDS: &[&str] =
        &["Silver", "North", "Red", "Oak", "Harbor", "Star", "Stone", "Blue", "Iron", "Maple", "River", "Golden"];
    const NOUNS: &[&str] = &["Creek", "Hill", "Tower", "Wing", "Bay", "Field", "Point", "Crown", "Bridge", "Garden"];
    const THINGS: &[&str] = &["bicycles", "furniture", "software", "batteries", "toys", "textiles"];
    let i = int(rng, 0, KINDS.len() as i64 - 1) as usize;
    let title = format!("{} {}", one(rng, WORDS), one(rng, NOUNS));
    let person = one(rng, PEOPLE);
    let (kind, phrases) = KINDS[i];
    let is_person = matches!(kind, "Artist" | "Athlete" | "OfficeHolder");
    let title = if is_person { person.to_string() } else { title };
    let content = one(rng, phrases)
        .replace("{T}", &title)
        .replace("{P}", person)
        .replace("{c}", one(rng, CITIES))
        .replace("{k}", one(rng, COUNTRIES))
        .replace("{thing}", one(rng, THINGS))
        .replace("{y}", &int(rng, 1850, 2015).to_string())
        .replace("{n}", &int(rng, 12, 4800).to_string());
    sample(vec![("title", title), ("content", content)], i.to_string())
}

const GOOD: &[&str] = &["wonderful", "moving", "brilliant", "charming", "funny", "gripping", "beautiful", "delightful"];
const BAD: &[&str] = &["boring", "clumsy", "dull", "tedious", "awful", "lifeless", "predictable", "annoying"];
const FILM_PARTS: &[&str] =
    &["the acting", "the script", "the story", "the soundtrack", "the ending", "this film", "the cast"];

pub fn sst2(rng: &mut StdRng) -> Sample {
    let positive = chance(rng, 0.5);
    let words = if positive { GOOD } else { BAD };
    const LEADS: &[&str] = &["", "honestly , ", "overall , ", "in the end , ", "frankly , ", "all in all , "];
    let sentence = match int(rng, 0, 2) {
        0 => format!("{} is {} and {} .", one(rng, FILM_PARTS), one(rng, words), one(rng, words)),
        1 => format!("a {} , {} piece of work", one(rng, words), one(rng, words)),
        _ => format!("{} feels {} from start to finish", one(rng, FILM_PARTS), one(rng, words)),
    };
    let sentence = format!("{}{sentence}{}", one(rng, LEADS), one(rng, &["", " , i think", " , really", " overall"]));
    sample(vec![("sentence", sentence)], if positive { "1" } else { "0" })
}

pub fn covid(rng: &mut StdRng) -> Sample {
    const LEVELS: &[(&str, &[&str])] = &[
        (
            "Extremely Positive",
            &[
                "Huge thanks to the amazing grocery staff, you are heroes!! Best community ever",
                "So grateful and happy: the pharmacy delivered everything, wonderful service, love it",
            ],
        ),
        (
            "Positive",
            &[
                "Good to see the supermarket restocked the shelves today",
                "Nice that stores now open early for older shoppers",
            ],
        ),
        (
            "Neutral",
            &[
                "The supermarket on Main Street will open at 8am from Monday",
                "Prices of hand sanitizer are listed on the store website",
            ],
        ),
        (
            "Negative",
            &["Empty shelves again, no toilet paper anywhere", "Prices at the store went up and the queue was long"],
        ),
        (
            "Extremely Negative",
            &[
                "Disgusting panic buying, greedy people hoarding everything, terrible and shameful",
                "Worst crisis ever, stores are a disaster and prices are a scam, horrible",
            ],
        ),
    ];
    let (label, phrases) = LEVELS[int(rng, 0, 4) as usize];
    let tweet = format!(
        "{} #{} #coronavirus",
        one(rng, phrases),
        one(rng, &["COVID19", "stayhome", "panicbuying", "lockdown"])
    );
    let date = format!("{:02}-03-2020", int(rng, 1, 31));
    sample(vec![("OriginalTweet", tweet), ("TweetAt", date), ("Location", one(rng, CITIES).to_string())], label)
}

pub fn jigsaw(rng: &mut StdRng) -> Sample {
    const TOXIC: &[&str] = &[
        "you are a complete idiot and nobody wants you here",
        "shut up, you stupid moron",
        "what a pathetic loser, get lost",
        "only an imbecile would write this garbage",
    ];
    const CLEAN: &[&str] = &[
        "thanks for fixing the citation in the second paragraph",
        "I disagree with this edit, the source says 1998",
        "could you add a reference for the population figure",
        "good point, I will update the article tonight",
    ];
    let toxic = chance(rng, 0.5);
    let text = format!("{} {}", one(rng, if toxic { TOXIC } else { CLEAN }), one(rng, &["", "!", ".", "...", " - "]));
    let text = format!("{} (re: the {} article, {})", text.trim(), one(rng, CITIES), one(rng, FIRST_NAMES));
    sample(vec![("comment_text", text)], if toxic { "yes" } else { "no" })
}

pub fn mnli(rng: &mut StdRng) -> Sample {
    let (p, c) = (one(rng, PEOPLE), one(rng, CITIES));
    const DAYS: &[&str] = &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let day = one(rng, DAYS);
    let premise = format!("{p} drove to {c} on {day} to visit her parents.");
    let (hyp, label) = match int(rng, 0, 2) {
        0 => (
            one(rng, &[format!("{p} went to {c}.").as_str(), format!("{p} visited family.").as_str()]).to_string(),
            "0",
        ),
        1 => (
            one(rng, &[format!("{p} stayed in {c} for a week.").as_str(), format!("{p} likes driving.").as_str()])
                .to_string(),
            "1",
        ),
        _ => (
            one(rng, &[format!("{p} never left home on {day}.").as_str(), format!("{p} flew to {c}.").as_str()])
                .to_string(),
            "2",
        ),
    };
    sample(vec![("premise", premise), ("hypothesis", hyp)], label)
}

pub fn qnli(rng: &mut StdRng) -> Sample {
    let (org, city, year) = (one(rng, ORGS), one(rng, CITIES), int(rng, 1900, 2010));
    let question = format!("When was {org} founded");
    let answers = chance(rng, 0.5);
    let sentence = if answers {
        format!("{org} was founded in {year} in {city}.")
    } else {
        format!("{org} has its main office in {city} and employs many people.")
    };
    sample(vec![("question", question + "?"), ("sentence", sentence)], if answers { "0" } else { "1" })
}

pub fn qqp(rng: &mut StdRng) -> Sample {
    const TOPICS: &[(&str, &str)] = &[
        ("How do I learn {x} quickly?", "What is the fastest way to learn {x}?"),
        ("What are the best books about {x}?", "Which books about {x} should I read?"),
        ("Is {x} hard to learn?", "How difficult is it to learn {x}?"),
    ];
    const SUBJECTS: &[&str] = &["Python", "chess", "Spanish", "guitar", "calculus", "cooking", "photography"];
    let i = int(rng, 0, 2) as usize;
    let x = one(rng, SUBJECTS);
    const WHO: &[&str] = &["", " as a beginner", " as an adult", " at home", " in my free time", " for work"];
    let who = one(rng, WHO);
    let q1 = TOPICS[i].0.replace("{x}", &format!("{x}{who}"));
    let dup = chance(rng, 0.5);
    let q2 = if dup {
        TOPICS[i].1.replace("{x}", &format!("{x}{who}"))
    } else {
        let j = (i + int(rng, 1, 2) as usize) % 3;
        TOPICS[j].1.replace("{x}", &format!("{}{}", one(rng, SUBJECTS), one(rng, WHO)))
    };
    sample(vec![("question1", q1), ("question2", q2)], if dup { "1" } else { "0" })
}

pub fn mrpc(rng: &mut StdRng) -> Sample {
    let (org, n, city) = (one(rng, ORGS), int(rng, 2, 40), one(rng, CITIES));
    let s1 = format!("{org} said on Tuesday it would cut {n} percent of its jobs in {city}.");
    let same = chance(rng, 0.5);
    let s2 = if same {
        format!("On Tuesday {org} announced plans to reduce its {city} workforce by {n} percent.")
    } else {
        format!("{org} said on Tuesday it would open a new factory in {}.", one(rng, CITIES))
    };
    sample(vec![("sentence1", s1), ("sentence2", s2)], if same { "1" } else { "0" })
}

pub fn stsb(rng: &mut StdRng) -> Sample {
    const ANIMALS: &[&str] = &["A dog", "A cat", "A horse", "A child", "A man", "A woman"];
    const ACTS: &[&str] = &[
        "is running in a field",
        "is playing with a ball",
        "is sleeping on the sofa",
        "is eating an apple",
        "is swimming in a pool",
    ];
    const PLACES: &[&str] = &["", " in the park", " at home", " near the lake", " in the garden", " on the beach"];
    let (a, b) = (one(rng, ANIMALS), one(rng, ACTS));
    let place = one(rng, PLACES);
    let s1 = format!("{a} {b}{place}.");
    let (s2, score) = match int(rng, 0, 3) {
        0 => (format!("{a} {b}{place}."), "5.0"),
        1 => (format!("{a} {b}{place} today."), "4.0"),
        2 => (format!("{} {b}{place}.", one(rng, ANIMALS)), "2.5"),
        _ => (format!("{} {}{place}.", one(rng, ANIMALS), one(rng, ACTS)), "0.5"),
    };
    let score = if s1 == s2 {
        "5.0"
    } else if score == "5.0" {
        "4.0"
    } else {
        score
    };
    sample(vec![("sentence1", s1), ("sentence2", s2)], score)
}

pub fn cola(rng: &mut StdRng) -> Sample {
    let (p, q) = (one(rng, FIRST_NAMES), one(rng, FIRST_NAMES));
    const VERBS: &[(&str, &str)] = &[("saw", "seen"), ("gave", "given"), ("wrote", "written"), ("took", "taken")];
    let (past, part) = VERBS[int(rng, 0, 3) as usize];
    let ok = chance(rng, 0.5);
    let thing = one(rng, &["letter", "book", "report", "poem", "photo"]);
    let sentence = match (ok, int(rng, 0, 1)) {
        (true, 0) => format!("{p} {past} the {thing} to {q}."),
        (true, _) => format!("The {thing} was {part} by {p}."),
        (false, 0) => format!("{p} the {thing} {past} {q} to."),
        (false, _) => format!("The {thing} was {past} by {p} the."),
    };
    sample(vec![("sentence", sentence)], if ok { "1" } else { "0" })
}

pub fn boolq(rng: &mut StdRng) -> Sample {
    let (city, country, n) = (one(rng, CITIES), one(rng, COUNTRIES), int(rng, 2, 9));
    let bridges = int(rng, 2, 12);
    let passage = format!(
        "{city} has {n} museums and a large central park. The city is known for its river port and its {bridges} old bridges."
    );
    let (question, yes) = match int(rng, 0, 3) {
        0 => (format!("does {} have a central park", city.to_lowercase()), true),
        1 => (format!("does {} have more than {} museums", city.to_lowercase(), n - 1), true),
        2 => (format!("does {} have more than {} museums", city.to_lowercase(), n + 1), false),
        _ => (format!("is {} the capital of {}", city.to_lowercase(), country.to_lowercase()), false),
    };
    sample(vec![("passage", passage), ("question", question)], if yes { "yes" } else { "no" })
}

pub fn winogrande(rng: &mut StdRng) -> Sample {
    const PAIRS: &[(&str, &str, &str)] = &[
        ("the trophy", "the suitcase", "The trophy doesn't fit into the suitcase because _ is too {big}."),
        ("the bottle", "the bag", "The bottle didn't fit in the bag because _ was too {big}."),
        ("the piano", "the doorway", "The piano would not go through the doorway because _ was too {big}."),
        ("the box", "the shelf", "The box could not be put on the shelf because _ was too {big}."),
        ("the sofa", "the van", "The sofa did not fit in the van because _ was too {big}."),
    ];
    let (a, b, s) = PAIRS[int(rng, 0, PAIRS.len() as i64 - 1) as usize];
    let big = chance(rng, 0.5);
    let sentence = s.replace("{big}", if big { "large" } else { "small" });
    let (p, q) = (one(rng, FIRST_NAMES), one(rng, FIRST_NAMES));
    let sentence = format!("{p} told {q} the story. {sentence}");
    let swap = chance(rng, 0.5);
    let (o1, o2) = if swap { (b, a) } else { (a, b) };
    let right = if big { a } else { b };
    sample(
        vec![("sentence", sentence), ("option1", o1.into()), ("option2", o2.into())],
        if right == o1 { "1" } else { "2" },
    )
}

pub fn hellaswag(rng: &mut StdRng) -> Sample {
    const SCENES: &[(&str, &str, &[&str])] = &[
        (
            "{p} puts flour and eggs in a bowl.",
            "{P} mixes them into a smooth batter.",
            &["{P} paints the fence blue.", "{P} dives into the lake.", "{P} changes a car tire."],
        ),
        (
            "{p} ties the laces of running shoes.",
            "{P} starts jogging down the road.",
            &["{P} bakes a cake.", "{P} reads a newspaper in bed.", "{P} plays the violin."],
        ),
        (
            "{p} fills a bucket with soapy water.",
            "{P} scrubs the car with a sponge.",
            &["{P} climbs a mountain.", "{P} knits a scarf.", "{P} takes an exam."],
        ),
        (
            "{p} opens a box of paints and a canvas.",
            "{P} paints a landscape with a brush.",
            &["{P} fixes the sink.", "{P} runs a marathon.", "{P} feeds the fish."],
        ),
        (
            "{p} carries a surfboard to the beach.",
            "{P} paddles out to catch a wave.",
            &["{P} irons a shirt.", "{P} sings in a choir.", "{P} mows the lawn."],
        ),
    ];
    let p = one(rng, FIRST_NAMES);
    let (ctx, right, wrong) = SCENES[int(rng, 0, SCENES.len() as i64 - 1) as usize];
    let when = one(rng, &["", "In the morning, ", "On a sunny day, ", "After work, ", "On Saturday, "]);
    let at = int(rng, 0, 3) as usize;
    let wrong: Vec<String> = wrong.iter().map(|w| w.replace("{P}", "They")).collect();
    let mut endings: Vec<String> = distinct(rng, 3, 3).into_iter().map(|i| wrong[i].clone()).collect();
    endings.insert(at, right.replace("{P}", "They"));
    let endings = endings.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    sample(
        vec![("ctx", format!("{when}{}", ctx.replace("{p}", p))), ("endings", format!("[{endings}]"))],
        at.to_string(),
    )
}
