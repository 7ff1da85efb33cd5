#!/usr/bin/env python3
"""Writes catalog/adapters.json, the adapter catalog of the web app (and of the trainer), from the LoRA Land task
YAMLs in ../shared/lora-land-tasks, parsed with PyYAML so that the prompt templates stay exactly as the published
adapters were trained on them. The five example inputs per task are ours. `reference_prompt` is Python's
`template.format(**examples[0])`, which the Rust template renderer is tested against.

Usage: python3 scripts/make-catalog.py [TASKS_DIR] > catalog/adapters.json   (needs PyYAML)
"""
import json
import sys
from pathlib import Path

import yaml

# The 25 tasks of the demo: every task of the study that has input variables, except the two that duplicate
# another task's data (hellaswag_processed, webnlg's preprocessed triples).
TASKS = [
    "customer_support", "dbpedia", "legal", "glue_sst2", "covid", "jigsaw", "conllpp", "bc5cdr", "glue_mnli",
    "glue_qnli", "glue_qqp", "glue_mrpc", "glue_stsb", "glue_cola", "boolq", "winogrande", "hellaswag", "drop",
    "gsm8k", "magicoder", "wikisql", "e2e_nlg", "viggo", "tldr_headline_gen", "tldr_content_gen",
]
# Adapters in Predibase's published "LoRA Land" collection on the Hugging Face hub (predibase/<task>).
PUBLISHED = {
    "magicoder", "conllpp", "dbpedia", "gsm8k", "customer_support", "glue_qnli", "glue_mnli", "glue_sst2",
    "glue_cola", "glue_stsb", "glue_mrpc", "glue_qqp", "tldr_headline_gen", "tldr_content_gen", "drop",
}

# What an answer to the task must look like, for constrained decoding (the web app's "constrain to the task's output
# format" switch, `loraland eval --constrained`): the label set the template names, or the JSON its example shows.
NER_SCHEMA = {
    "type": "object",
    "properties": {k: {"type": "array", "items": {"type": "string"}} for k in
                   ["person", "organization", "location", "miscellaneous"]},
    "required": ["person", "organization", "location", "miscellaneous"],
    "additionalProperties": False,
}
CONSTRAINTS = {
    "customer_support": {"choice": ["replace card", "transfer money", "check balance", "order checks", "pay bill",
                                    "reset password", "schedule appointment", "get branch hours",
                                    "none of the above"]},
    "dbpedia": {"choice": ["Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder",
                           "MeanOfTransportation", "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album",
                           "Film", "WrittenWork"]},
    "glue_sst2": {"choice": ["0", "1"]},
    "covid": {"choice": ["Extremely Positive", "Positive", "Neutral", "Negative", "Extremely Negative"]},
    "jigsaw": {"choice": ["yes", "no"]},
    "conllpp": {"json_schema": NER_SCHEMA},
    "glue_mnli": {"choice": ["0", "1", "2"]},
    "glue_qnli": {"choice": ["0", "1"]},
    "glue_qqp": {"choice": ["0", "1"]},
    "glue_mrpc": {"choice": ["0", "1"]},
    "glue_stsb": {"regex": "[0-5](\\.[0-9]{1,2})?"},
    "glue_cola": {"choice": ["0", "1"]},
    "boolq": {"choice": ["yes", "no"]},
    "winogrande": {"choice": ["1", "2"]},
    "hellaswag": {"choice": ["0", "1", "2", "3"]},
}

EXAMPLES = {
    "customer_support": [
        {"text": "Hi, I lost my debit card yesterday and I need a new one sent to me as soon as possible."},
        {"text": "I'd like to move five hundred dollars from my savings account into my checking account please."},
        {"text": "Can you tell me how much money is currently in my checking account?"},
        {"text": "I forgot my online banking password and I'm locked out, can you help me get back in?"},
        {"text": "What time does the downtown branch close on Saturdays?"},
    ],
    "dbpedia": [
        {"title": "Lake Bled", "content": "Lake Bled is a glacial lake in the Julian Alps in northwestern Slovenia, famous for its island church."},
        {"title": "Ferrari 250 GTO", "content": "The Ferrari 250 GTO is a GT car produced by Ferrari from 1962 to 1964 for homologation into the FIA's Group 3."},
        {"title": "Serena Williams", "content": "Serena Jameka Williams is an American former professional tennis player who won 23 Grand Slam singles titles."},
        {"title": "Abbey Road", "content": "Abbey Road is the eleventh studio album by the English rock band the Beatles, released in September 1969."},
        {"title": "University of Bologna", "content": "The University of Bologna is a public research university in Bologna, Italy, founded in 1088."},
    ],
    "legal": [
        {"clause_text": "This Agreement shall be governed by and construed in accordance with the laws of the State of New York."},
        {"clause_text": "Neither party shall disclose any Confidential Information of the other party to any third party without prior written consent."},
        {"clause_text": "Either party may terminate this Agreement upon thirty (30) days written notice to the other party."},
        {"clause_text": "The Supplier shall indemnify and hold harmless the Buyer from any claims arising out of the Supplier's negligence."},
        {"clause_text": "This Agreement may be executed in counterparts, each of which shall be deemed an original."},
    ],
    "glue_sst2": [
        {"sentence": "a gorgeous, witty, seductive movie ."},
        {"sentence": "the plot is nothing but a string of tired clichés ."},
        {"sentence": "an endearing, warm-hearted story that never talks down to its audience ."},
        {"sentence": "it drags on far too long and goes nowhere ."},
        {"sentence": "the performances are uniformly excellent ."},
    ],
    "covid": [
        {"OriginalTweet": "Supermarket shelves empty again, no pasta, no toilet paper. People need to calm down!", "TweetAt": "16-03-2020", "Location": "London, England"},
        {"OriginalTweet": "Huge thanks to the grocery workers keeping our stores open. You are heroes!", "TweetAt": "22-03-2020", "Location": "Toronto, Ontario"},
        {"OriginalTweet": "Prices of hand sanitizer have tripled at my local pharmacy.", "TweetAt": "18-03-2020", "Location": "Sydney, Australia"},
        {"OriginalTweet": "Stores will open an hour early for elderly shoppers starting Monday.", "TweetAt": "17-03-2020", "Location": "New York, NY"},
        {"OriginalTweet": "Panic buying is disgusting and selfish, the most vulnerable are left with nothing.", "TweetAt": "19-03-2020", "Location": "Dublin, Ireland"},
    ],
    "jigsaw": [
        {"comment_text": "Thanks for fixing the citation, the article reads much better now."},
        {"comment_text": "You are an idiot and nobody wants you editing here."},
        {"comment_text": "I disagree with this change; the source does not support the claim."},
        {"comment_text": "Shut up, you pathetic loser."},
        {"comment_text": "Could someone add a photo of the bridge to the infobox?"},
    ],
    "conllpp": [
        {"input": "Japan began the defence of their Asian Cup title with a lucky 2-1 win against Syria ."},
        {"input": "Angela Merkel met Emmanuel Macron in Paris on Tuesday ."},
        {"input": "Apple unveiled a new iPhone at its headquarters in Cupertino ."},
        {"input": "The United Nations sent aid to flood victims in Pakistan ."},
        {"input": "Roger Federer beat Rafael Nadal in the Wimbledon final ."},
    ],
    "bc5cdr": [
        {"tokens_concatenated": "Lithium carbonate may cause renal failure in patients with bipolar disorder ."},
        {"tokens_concatenated": "Aspirin reduced the risk of myocardial infarction ."},
        {"tokens_concatenated": "Cisplatin induced nephrotoxicity in rats ."},
        {"tokens_concatenated": "Haloperidol - induced catalepsy was reversed by scopolamine ."},
        {"tokens_concatenated": "Patients treated with amiodarone developed hypothyroidism ."},
    ],
    "glue_mnli": [
        {"premise": "The new rights are nice enough.", "hypothesis": "Everyone really likes the newest benefits."},
        {"premise": "A man is playing a guitar on stage.", "hypothesis": "A man is performing music."},
        {"premise": "The museum is closed on Mondays.", "hypothesis": "The museum is open every day of the week."},
        {"premise": "She finished the marathon in under four hours.", "hypothesis": "She ran a long race."},
        {"premise": "The report was published last year.", "hypothesis": "The report was written by three authors."},
    ],
    "glue_qnli": [
        {"question": "What is the capital of Australia?", "sentence": "Canberra is the capital city of Australia."},
        {"question": "When did the Berlin Wall fall?", "sentence": "The wall was built by the German Democratic Republic."},
        {"question": "Who wrote Pride and Prejudice?", "sentence": "Pride and Prejudice is an 1813 novel by Jane Austen."},
        {"question": "How tall is Mount Everest?", "sentence": "Everest attracts many climbers, some of them highly experienced."},
        {"question": "What do bees produce?", "sentence": "Honey bees produce honey from the nectar of flowers."},
    ],
    "glue_qqp": [
        {"question1": "How do I learn Python quickly?", "question2": "What is the fastest way to learn Python?"},
        {"question1": "What is the best phone to buy in 2024?", "question2": "How do I fix a cracked phone screen?"},
        {"question1": "Why is the sky blue?", "question2": "What makes the sky look blue?"},
        {"question1": "How can I lose weight fast?", "question2": "What are healthy breakfast ideas?"},
        {"question1": "Is coffee bad for your health?", "question2": "Is drinking coffee unhealthy?"},
    ],
    "glue_mrpc": [
        {"sentence1": "The company said profits rose 10 percent in the third quarter.", "sentence2": "Third-quarter profits increased by 10 percent, the company said."},
        {"sentence1": "The storm knocked out power to thousands of homes.", "sentence2": "The mayor announced a new budget on Friday."},
        {"sentence1": "He was arrested on Tuesday in Chicago.", "sentence2": "Police arrested him in Chicago on Tuesday."},
        {"sentence1": "Shares fell 3 percent in early trading.", "sentence2": "The stock rose sharply by the close."},
        {"sentence1": "The bill passed the Senate by a vote of 60 to 40.", "sentence2": "Senators approved the bill 60-40."},
    ],
    "glue_stsb": [
        {"sentence1": "A man is playing a flute.", "sentence2": "A man is playing a flute."},
        {"sentence1": "A woman is slicing an onion.", "sentence2": "A woman is cutting an onion."},
        {"sentence1": "A dog runs across the field.", "sentence2": "A cat sleeps on the sofa."},
        {"sentence1": "Two children are playing in the snow.", "sentence2": "Kids are playing outside in winter."},
        {"sentence1": "The stock market fell today.", "sentence2": "A chef is cooking pasta."},
    ],
    "glue_cola": [
        {"sentence": "The book was written by John."},
        {"sentence": "Book the was by written John."},
        {"sentence": "She seems happy."},
        {"sentence": "The more you read, the more you learn."},
        {"sentence": "He have went to the store yesterday."},
    ],
    "boolq": [
        {"passage": "The Great Wall of China is a series of fortifications built across the historical northern borders of ancient Chinese states.", "question": "is the great wall of china in china"},
        {"passage": "Pluto was reclassified as a dwarf planet by the International Astronomical Union in 2006.", "question": "is pluto still considered a planet"},
        {"passage": "The blue whale is the largest animal known to have ever existed.", "question": "is the blue whale the largest animal"},
        {"passage": "Tomatoes are botanically classified as fruits, though they are usually eaten as vegetables.", "question": "is a tomato a vegetable botanically"},
        {"passage": "Water boils at 100 degrees Celsius at sea level.", "question": "does water boil at 100 degrees celsius at sea level"},
    ],
    "winogrande": [
        {"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.", "option1": "trophy", "option2": "suitcase"},
        {"sentence": "Sarah lent Maria her umbrella because _ was going out in the rain.", "option1": "Sarah", "option2": "Maria"},
        {"sentence": "The ice cream melted faster than the cake because the _ was softer.", "option1": "ice cream", "option2": "cake"},
        {"sentence": "John studied harder than Paul, so _ got the better grade.", "option1": "John", "option2": "Paul"},
        {"sentence": "The plant grew taller than the fence because the _ got more sunlight.", "option1": "plant", "option2": "fence"},
    ],
    "hellaswag": [
        {"ctx": "A woman is standing in a kitchen holding a bowl of eggs. She", "endings": "\"cracks the eggs into a pan.\", \"drives a car down the road.\", \"paints a portrait of a horse.\", \"swims across the pool.\""},
        {"ctx": "A man puts on his helmet and climbs onto the bike. He", "endings": "\"starts pedaling down the street.\", \"bakes a loaf of bread.\", \"reads a book in bed.\", \"plants a tree.\""},
        {"ctx": "The kids gather around the birthday cake. They", "endings": "\"fix the roof.\", \"blow out the candles.\", \"file their taxes.\", \"board a plane.\""},
        {"ctx": "A dog runs toward the frisbee in the park. It", "endings": "\"writes a letter.\", \"catches it in its mouth.\", \"cooks dinner.\", \"drives away.\""},
        {"ctx": "She opens her umbrella as the rain begins. She", "endings": "\"walks home under it.\", \"throws it in the oven.\", \"plays the piano with it.\", \"mails it to a friend.\""},
    ],
    "drop": [
        {"passage": "The Bears scored 14 points in the first quarter and 10 in the second, while the Lions scored 7 in each half.", "question": "How many points did the Bears score in the first half?"},
        {"passage": "In 1990 the town had 4,200 residents; by 2000 the population had grown to 5,100.", "question": "By how many residents did the population grow between 1990 and 2000?"},
        {"passage": "Smith kicked field goals of 32, 45 and 51 yards in the game.", "question": "What was the longest field goal?"},
        {"passage": "The treaty was signed in 1648, ending thirty years of war.", "question": "In what year did the war begin?"},
        {"passage": "Of the 300 students, 120 chose French, 100 chose Spanish and the rest chose German.", "question": "How many students chose German?"},
    ],
    "gsm8k": [
        {"question": "Tom has 3 boxes with 12 apples each. He gives away 10 apples. How many apples does he have left?"},
        {"question": "A train travels 60 miles per hour for 2.5 hours. How far does it travel?"},
        {"question": "Maria buys 4 notebooks at $3 each and a pen for $2. How much does she spend?"},
        {"question": "A class has 28 students. If 3/4 of them passed the test, how many students passed?"},
        {"question": "Sam saves $15 a week. How many weeks does he need to save $120?"},
    ],
    "magicoder": [
        {"problem": "Write a function that returns the n-th Fibonacci number.", "lang": "Python"},
        {"problem": "Write a function that checks whether a string is a palindrome, ignoring case.", "lang": "Rust"},
        {"problem": "Write a function that returns the largest element of an array of integers.", "lang": "JavaScript"},
        {"problem": "Write a function that counts the vowels in a string.", "lang": "Go"},
        {"problem": "Write a SQL query that returns the ten most recent orders from an orders table.", "lang": "SQL"},
    ],
    "wikisql": [
        {"table": "CREATE TABLE players (name VARCHAR, team VARCHAR, goals INT)", "question": "How many goals did Messi score?"},
        {"table": "CREATE TABLE cities (city VARCHAR, country VARCHAR, population INT)", "question": "Which city in France has the largest population?"},
        {"table": "CREATE TABLE films (title VARCHAR, director VARCHAR, year INT)", "question": "Who directed the film released in 1994?"},
        {"table": "CREATE TABLE elections (district VARCHAR, incumbent VARCHAR, party VARCHAR)", "question": "What party is the incumbent of district 5 from?"},
        {"table": "CREATE TABLE races (race VARCHAR, winner VARCHAR, date VARCHAR)", "question": "Who won the race on 12 May?"},
    ],
    "e2e_nlg": [
        {"meaning_representation": "name[The Eagle], eatType[coffee shop], food[Japanese], priceRange[less than £20], area[riverside]"},
        {"meaning_representation": "name[Alimentum], food[Italian], priceRange[high], area[city centre], familyFriendly[no]"},
        {"meaning_representation": "name[The Golden Curry], food[Indian], customer rating[5 out of 5], near[Café Rouge]"},
        {"meaning_representation": "name[Zizzi], eatType[pub], food[English], familyFriendly[yes]"},
        {"meaning_representation": "name[Loch Fyne], eatType[restaurant], food[French], area[riverside]"},
    ],
    "viggo": [
        {"meaning_representation": "inform(name[Portal 2], release_year[2011], genres[puzzle, platformer], rating[excellent])"},
        {"meaning_representation": "request(genres[racing], specifier[fast-paced])"},
        {"meaning_representation": "give_opinion(name[The Sims], rating[average], genres[simulation])"},
        {"meaning_representation": "confirm(name[Minecraft], has_multiplayer[yes])"},
        {"meaning_representation": "suggest(name[Stardew Valley], genres[simulation, role-playing], player_perspective[bird view])"},
    ],
    "tldr_headline_gen": [
        {"content": "A startup has released an open-source tool that lets developers run large language models on laptops without a GPU, cutting costs for small teams."},
        {"content": "Researchers announced a battery chemistry that charges to 80 percent in five minutes and survives thousands of cycles."},
        {"content": "The city council approved a plan to turn three downtown parking lots into public parks by 2027."},
        {"content": "A popular messaging app added end-to-end encryption to group calls for all of its users."},
        {"content": "Astronomers detected water vapour in the atmosphere of a planet orbiting a nearby red dwarf star."},
    ],
    "tldr_content_gen": [
        {"headline": "Open-source model runs on a Raspberry Pi"},
        {"headline": "Electric planes start regional flights in Norway"},
        {"headline": "New browser feature blocks tracking by default"},
        {"headline": "Scientists map the brain of a fruit fly"},
        {"headline": "Chip maker opens its largest factory in Arizona"},
    ],
}


def main():
    tasks_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent.parent / "shared" / "lora-land-tasks")
    tasks = []
    for task_id in TASKS:
        d = yaml.safe_load((tasks_dir / f"{task_id}.yaml").read_text())
        variables = [v.strip() for v in str(d["input_columns"]).split(",")]
        examples = EXAMPLES[task_id]
        assert len(examples) == 5 and all(list(e) == variables for e in examples), task_id
        template = d["prompt_template"]
        tasks.append({
            "id": task_id,
            "name": d["adapter_ui_name"],
            "category": d["adapter_category"],
            "description": d["dataset_description"],
            "template": template,
            "variables": variables,
            "metric": d["metric_name"],
            "output_format": d.get("expected_output_format") or "text",
            "examples": examples,
            "reference_prompt": template.format(**examples[0]),
            "adapters": {"embedded": task_id, "mistral-7b": f"predibase/{task_id}"},
            "published": task_id in PUBLISHED,
            "constraint": CONSTRAINTS.get(task_id),
        })
    json.dump({"source": "predibase/lora_bakeoff tasks/ (commit 2ac88b9)", "tasks": tasks}, sys.stdout, indent=1,
              ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
