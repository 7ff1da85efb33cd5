//! Generators of the text-producing tasks: clause types, restaurant and video-game descriptions from meaning
//! representations, and news headlines and bodies.

use super::pick::{int, one, CITIES, ORGS, PEOPLE};
use super::sample::Sample;
use rand::rngs::StdRng;

pub fn legal(rng: &mut StdRng) -> Sample {
    const CLAUSES: &[(&str, &[&str])] = &[
        (
            "governing-law",
            &[
                "This Agreement shall be governed by the laws of the State of {s}.",
                "The laws of {s} govern this Agreement without regard to conflict of laws.",
            ],
        ),
        (
            "confidentiality",
            &[
                "Each party shall keep the other party's Confidential Information secret for {n} years.",
                "The Receiving Party shall not disclose Confidential Information to any third party.",
            ],
        ),
        (
            "termination",
            &[
                "Either party may terminate this Agreement on {n} days' written notice.",
                "This Agreement terminates automatically if either party becomes insolvent.",
            ],
        ),
        (
            "indemnification",
            &[
                "The Supplier shall indemnify the Buyer against all losses arising from its breach.",
                "Each party shall indemnify and hold harmless the other from third-party claims.",
            ],
        ),
        (
            "assignment",
            &[
                "Neither party may assign this Agreement without the other's prior written consent.",
                "The Company may assign its rights under this Agreement to any affiliate.",
            ],
        ),
        (
            "severability",
            &[
                "If any provision is held invalid, the remaining provisions remain in full force.",
                "Any unenforceable term shall be severed and the rest of this Agreement shall continue.",
            ],
        ),
        (
            "notices",
            &[
                "All notices shall be in writing and sent to the addresses set out above.",
                "Notices are deemed received {n} days after posting by registered mail.",
            ],
        ),
        (
            "force-majeure",
            &[
                "Neither party is liable for delay caused by events beyond its reasonable control.",
                "Performance is excused during fire, flood, war or other force majeure events.",
            ],
        ),
    ];
    const STATES: &[&str] = &["New York", "Delaware", "California", "Texas", "Illinois"];
    let (label, texts) = CLAUSES[int(rng, 0, CLAUSES.len() as i64 - 1) as usize];
    let text = one(rng, texts).replace("{s}", one(rng, STATES)).replace("{n}", &int(rng, 2, 90).to_string());
    let text = format!("{}. {text}", int(rng, 1, 24));
    Sample { vars: vec![("clause_text", text)], completion: label.to_string() }
}

pub fn e2e_nlg(rng: &mut StdRng) -> Sample {
    const NAMES: &[&str] =
        &["Blue Spice", "The Mill", "Green Man", "Aromi", "The Phoenix", "Zizzi", "The Eagle", "Cotto"];
    const TYPES: &[&str] = &["coffee shop", "restaurant", "pub"];
    const FOODS: &[&str] = &["Italian", "French", "Chinese", "Indian", "English", "Japanese"];
    const AREAS: &[&str] = &["city centre", "riverside"];
    const PRICES: &[&str] = &["cheap", "moderate", "high"];
    let (name, kind, food, area, price) =
        (one(rng, NAMES), one(rng, TYPES), one(rng, FOODS), one(rng, AREAS), one(rng, PRICES));
    let family = one(rng, &["", "yes", "no"]);
    let mut mr = format!("name[{name}], eatType[{kind}], food[{food}], priceRange[{price}], area[{area}]");
    if !family.is_empty() {
        mr.push_str(&format!(", familyFriendly[{family}]"));
    }
    let price_text = match price {
        "cheap" => "cheap",
        "moderate" => "moderately priced",
        _ => "expensive",
    };
    let family_text = match family {
        "yes" => " It is family friendly.",
        "no" => " It is not family friendly.",
        _ => "",
    };
    let text = format!("{name} is a {price_text} {kind} serving {food} food in the {area} area.{family_text}");
    Sample { vars: vec![("meaning_representation", mr)], completion: text }
}

pub fn viggo(rng: &mut StdRng) -> Sample {
    const GAMES: &[&str] = &["Starfall", "Iron Harbor", "Pixel Quest", "Night Runner", "Crystal Keep", "Sky Garden"];
    const GENRES: &[&str] = &["adventure", "puzzle", "shooter", "role-playing", "strategy", "platformer"];
    const RATINGS: &[&str] = &["excellent", "good", "average", "poor"];
    let (game, genre, rating, year) = (one(rng, GAMES), one(rng, GENRES), one(rng, RATINGS), int(rng, 1995, 2020));
    let (mr, text) = if int(rng, 0, 1) == 0 {
        (
            format!("inform(name[{game}], release_year[{year}], genres[{genre}], rating[{rating}])"),
            format!("{game} is a {genre} game released in {year} that got {rating} ratings."),
        )
    } else {
        (
            format!("give_opinion(name[{game}], rating[{rating}], genres[{genre}])"),
            format!("I think {game} is an {rating} {genre} game.")
                .replace("an good", "a good")
                .replace("an poor", "a poor"),
        )
    };
    Sample { vars: vec![("meaning_representation", mr)], completion: text }
}

/// A tiny news item: its headline and its body.
fn news(rng: &mut StdRng) -> (String, String) {
    let (org, city, person, n) = (one(rng, ORGS), one(rng, CITIES), one(rng, PEOPLE), int(rng, 2, 40));
    match int(rng, 0, 3) {
        3 => {
            let product = one(rng, &["cars", "phones", "heaters", "laptops", "toasters", "bicycles"]);
            (
                format!("{org} recalls {n}0,000 {product}"),
                format!("{org} is recalling {n}0,000 {product} after reports of faults. Customers in {city} were the first to complain. {person} said refunds will be offered."),
            )
        }
        0 => (
            format!("{org} opens new office in {city}"),
            format!("{org} opened a new office in {city} on Monday. The office will employ {n}0 people. CEO {person} said the city was a natural choice."),
        ),
        1 => (
            format!("{org} shares fall {n} percent"),
            format!("Shares of {org} fell {n} percent on Tuesday after weak quarterly results. Analysts in {city} expect a slow recovery. {person} declined to comment."),
        ),
        _ => (
            format!("{person} named head of {org}"),
            format!("{org} has named {person} as its new chief executive. {person} previously ran the company's {city} division. The change takes effect in {n} days."),
        ),
    }
}

pub fn headline(rng: &mut StdRng) -> Sample {
    let (head, body) = news(rng);
    Sample { vars: vec![("content", body)], completion: head }
}

pub fn content(rng: &mut StdRng) -> Sample {
    let (head, body) = news(rng);
    Sample { vars: vec![("headline", head)], completion: body }
}
